//! Batches: which queries, positives and negatives each step draws (a
//! function of the seed and the step only, so a resumed run draws what an
//! uninterrupted one would), and the batch's contrastive and distillation
//! losses.

use super::*;

/// A drawn batch (positions within one source).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub source: usize,
    pub queries: Vec<usize>,
    pub docs: Vec<usize>,
    /// Per loss row: its query (an index into `queries`); one row per drawn
    /// positive, so a query with several positives has several rows.
    pub rows: Vec<usize>,
    /// Per loss row: the column of its target positive in `docs`.
    pub targets: Vec<i64>,
    /// Per loss row, per doc: whether it takes part in the row's softmax
    /// (the query's other judged positives do not).
    pub allowed: Vec<Vec<bool>>,
    /// Per query: teacher (column, score) pairs.
    pub teacher: Vec<Vec<(usize, f32)>>,
}

impl Batch {
    /// The loss rows' query positions (`[rows]`) and which documents take
    /// part in each row's softmax (`[rows, docs]`, bool), on `device`.
    fn row_tensors(&self, device: tch::Device) -> (Tensor, Tensor) {
        let rows: Vec<i64> = self.rows.iter().map(|&q| q as i64).collect();
        let flat: Vec<bool> = self.allowed.iter().flatten().copied().collect();
        let allowed = Tensor::from_slice(&flat)
            .view([self.rows.len() as i64, self.docs.len() as i64])
            .to_device(device);
        (Tensor::from_slice(&rows).to_device(device), allowed)
    }

    /// The contrastive loss of the batch's rows, given the scores of its
    /// queries against its documents (`[queries, docs]`).
    pub fn info_nce(&self, scores: &Tensor, temperature: f64) -> Tensor {
        let device = scores.device();
        let (rows, allowed) = self.row_tensors(device);
        let targets = Tensor::from_slice(&self.targets).to_device(device);
        loss::info_nce(
            &scores.index_select(0, &rows),
            &targets,
            &allowed,
            temperature,
        )
    }

    /// KL(teacher ‖ student) over each loss row's softmax columns (the
    /// documents [`Batch::info_nce`] lets take part), given both models'
    /// scores of the batch's queries against its documents.
    pub fn kl_rows(&self, student: &Tensor, teacher: &Tensor, temperature: f64) -> Tensor {
        let device = student.device();
        let (rows, allowed) = self.row_tensors(device);
        loss::kl_distill(
            &student.index_select(0, &rows),
            &teacher.to_device(device).index_select(0, &rows),
            &allowed,
            temperature,
        )
    }
}

/// What decides a drawn batch, besides the data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrawPlan {
    pub seed: u64,
    pub batch_size: usize,
    pub negatives: usize,
    /// Judged positives per query (at most).
    pub positives: usize,
    /// Teacher candidates per query (`None`: no distillation).
    pub distill_candidates: Option<usize>,
}

impl TrainConfig {
    pub fn draw_plan(&self) -> DrawPlan {
        DrawPlan {
            seed: self.seed,
            batch_size: self.batch_size,
            negatives: self.negatives,
            positives: self.positives,
            distill_candidates: (self.distill_weight > 0.0).then_some(self.distill_candidates),
        }
    }
}

/// The RNG of `step` (seeded by `(seed, step)` only).
pub fn step_rng(seed: u64, step: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(step as u64 + 1),
    )
}

/// Draws the batch of `step`: depends only on `(seed, step)` and the data.
pub fn draw_batch(cfg: &TrainConfig, sources: &[Source], step: usize) -> Batch {
    let sets: Vec<(f64, &[Example])> = sources
        .iter()
        .map(|s| (s.weight, s.examples.as_slice()))
        .collect();
    draw(&cfg.draw_plan(), &sets, step)
}

/// [`draw_batch`] over weighted example sets (any training material).
pub fn draw(plan: &DrawPlan, sets: &[(f64, &[Example])], step: usize) -> Batch {
    let mut rng = step_rng(plan.seed, step);
    let total: f64 = sets.iter().map(|s| s.0).sum();
    let mut pick = rng.gen::<f64>() * total;
    let mut si = sets.len() - 1;
    for (i, s) in sets.iter().enumerate() {
        if pick < s.0 {
            si = i;
            break;
        }
        pick -= s.0;
    }
    let examples = sets[si].1;
    let b = plan.batch_size.min(examples.len());
    let chosen = rand::seq::index::sample(&mut rng, examples.len(), b).into_vec();
    let mut docs: Vec<usize> = Vec::new();
    let mut col: HashMap<usize, usize> = HashMap::new();
    let mut add = |d: usize, docs: &mut Vec<usize>| {
        *col.entry(d).or_insert_with(|| {
            docs.push(d);
            docs.len() - 1
        })
    };
    let mut rows = Vec::with_capacity(b);
    let mut targets = Vec::with_capacity(b);
    let mut queries = Vec::with_capacity(b);
    let mut teacher = Vec::with_capacity(b);
    for (qi, &e) in chosen.iter().enumerate() {
        let ex = &examples[e];
        queries.push(ex.query);
        let n = ex.positives.len();
        // One positive: the draw every run made before --positives existed.
        let picks = if plan.positives <= 1 {
            vec![rng.gen_range(0..n)]
        } else {
            rand::seq::index::sample(&mut rng, n, plan.positives.min(n)).into_vec()
        };
        for i in picks {
            rows.push(qi);
            targets.push(add(ex.positives[i], &mut docs) as i64);
        }
    }
    for &e in &chosen {
        let ex = &examples[e];
        let k = plan.negatives.min(ex.negatives.len());
        for j in rand::seq::index::sample(&mut rng, ex.negatives.len(), k) {
            add(ex.negatives[j], &mut docs);
        }
    }
    if let Some(candidates) = plan.distill_candidates {
        for &e in &chosen {
            let ex = &examples[e];
            let row: Vec<(usize, f32)> = ex
                .teacher
                .iter()
                .take(candidates)
                .map(|&(d, s)| (add(d, &mut docs), s))
                .collect();
            teacher.push(row);
        }
    } else {
        teacher.resize(b, Vec::new());
    }
    // Each query's judged positives, once per query (a query has a row per
    // drawn positive).
    let judged: Vec<HashSet<usize>> = chosen
        .iter()
        .map(|&e| examples[e].positives.iter().copied().collect())
        .collect();
    let allowed = rows
        .iter()
        .zip(&targets)
        .map(|(&qi, &t)| {
            docs.iter()
                .enumerate()
                .map(|(j, d)| j as i64 == t || !judged[qi].contains(d))
                .collect()
        })
        .collect();
    Batch {
        source: si,
        queries,
        docs,
        rows,
        targets,
        allowed,
        teacher,
    }
}

/// The loss of one batch: the total to backpropagate through and its
/// parts' values.
pub struct BatchLoss {
    pub total: Tensor,
    pub contrastive: f64,
    pub distill: f64,
    /// The weighted L2-SP and raw-KL terms.
    pub anchor: f64,
}

/// Loss of one batch: contrastive, plus distillation from a teacher run
/// and the anchor terms ([`anchor`]) where the config weighs them.
pub fn batch_loss(
    cfg: &TrainConfig,
    trainee: &Trainee<'_>,
    sources: &[Source],
    batch: &Batch,
) -> BatchLoss {
    let src = &sources[batch.source];
    let device = trainee.device;
    let (qs, qm) = trainee.states(&src.queries, &batch.queries, TextKind::Query);
    let (ds, dm) = trainee.states(&src.docs, &batch.docs, TextKind::Document);
    let q = trainee.project_masked(&qs, &qm);
    let d = trainee.project_masked(&ds, &dm);
    let scores = loss::maxsim(&q, &qm, &d, &dm);
    let contrastive = batch.info_nce(&scores, cfg.temperature);
    let value = |t: &Tensor| f64::try_from(t).unwrap_or(f64::NAN);
    let mut out = BatchLoss {
        contrastive: value(&contrastive),
        total: contrastive,
        distill: 0.0,
        anchor: 0.0,
    };
    let mut anchor: Option<Tensor> = None;
    let mut add_anchor = |t: Tensor| {
        anchor = Some(match anchor.take() {
            Some(a) => a + t,
            None => t,
        });
    };
    if cfg.raw_kl > 0.0 {
        let teacher = anchor::raw_scores(&qs, &qm, &ds, &dm);
        add_anchor(batch.kl_rows(&scores, &teacher, cfg.distill_temperature) * cfg.raw_kl);
    }
    if cfg.l2_sp > 0.0 {
        if let Some(start) = &trainee.start {
            add_anchor(anchor::l2_sp(&trainee.head, start) * cfg.l2_sp);
        }
    }
    if let Some(a) = anchor {
        out.anchor = value(&a);
        out.total += a;
    }
    let width = batch.teacher.iter().map(Vec::len).max().unwrap_or(0);
    if cfg.distill_weight == 0.0 || width == 0 {
        return out;
    }
    let b = batch.queries.len();
    let mut cols = vec![0i64; b * width];
    let mut teach = vec![0f32; b * width];
    let mut valid = vec![false; b * width];
    for (r, row) in batch.teacher.iter().enumerate() {
        for (j, &(c, s)) in row.iter().enumerate() {
            cols[r * width + j] = c as i64;
            teach[r * width + j] = s;
            valid[r * width + j] = true;
        }
    }
    let shape = [b as i64, width as i64];
    let cols = Tensor::from_slice(&cols).view(shape).to_device(device);
    let student = scores.gather(1, &cols, false);
    let teacher = Tensor::from_slice(&teach).view(shape).to_device(device);
    let valid = Tensor::from_slice(&valid).view(shape).to_device(device);
    let kl = loss::kl_distill(&student, &teacher, &valid, cfg.distill_temperature);
    out.distill = value(&kl);
    out.total += kl * cfg.distill_weight;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(positives: usize) -> DrawPlan {
        DrawPlan {
            seed: 5,
            batch_size: 3,
            negatives: 1,
            positives,
            distill_candidates: None,
        }
    }

    /// Queries 0..4, each judged relevant to documents 10q..10q+4 (five
    /// positives), with one mined negative 100 + q.
    fn examples() -> Vec<Example> {
        (0..4)
            .map(|q| Example {
                query: q,
                positives: (10 * q..10 * q + 5).collect(),
                negatives: vec![100 + q],
                teacher: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn several_positives_give_a_row_each_and_mask_each_other() {
        let ex = examples();
        let b = draw(&plan(3), &[(1.0, &ex)], 0);
        assert_eq!(b.queries.len(), 3);
        assert_eq!(b.rows.len(), 9, "three positives for each of three queries");
        assert_eq!(b.targets.len(), 9);
        for (r, (&qi, &t)) in b.rows.iter().zip(&b.targets).enumerate() {
            let q = b.queries[qi];
            let target = b.docs[t as usize];
            assert!(ex[q].positives.contains(&target), "row {r}: {target}");
            for (j, &d) in b.docs.iter().enumerate() {
                let own_positive = ex[q].positives.contains(&d);
                // The target takes part; the query's other positives do not;
                // everything else (other queries' documents, negatives) does.
                let want = j as i64 == t || !own_positive;
                assert_eq!(b.allowed[r][j], want, "row {r}, doc {d}");
            }
        }
        // The positives of one query are distinct.
        for qi in 0..3 {
            let mut t: Vec<i64> = (0..9)
                .filter(|&r| b.rows[r] == qi)
                .map(|r| b.targets[r])
                .collect();
            t.sort_unstable();
            t.dedup();
            assert_eq!(t.len(), 3);
        }
        // More positives than a query has: all of them, once each.
        let all = draw(&plan(50), &[(1.0, &ex)], 0);
        assert_eq!(all.rows.len(), 15);
    }

    #[test]
    fn one_positive_draws_one_row_per_query() {
        let ex = examples();
        let b = draw(&plan(1), &[(1.0, &ex)], 3);
        assert_eq!(b.rows, vec![0, 1, 2]);
        assert_eq!(
            draw(&plan(1), &[(1.0, &ex)], 3),
            b,
            "seeded by (seed, step)"
        );
    }

    #[test]
    fn row_losses_pick_their_query_scores() {
        let ex = examples();
        let b = draw(&plan(2), &[(1.0, &ex)], 1);
        let (nq, nd) = (b.queries.len() as i64, b.docs.len() as i64);
        let scores = Tensor::arange(nq * nd, (Kind::Float, Device::Cpu)).view([nq, nd]) / 10.0;
        let got = f64::try_from(b.info_nce(&scores, 1.0)).unwrap();
        // By hand: mean over rows of logsumexp(allowed scores) − target score.
        let s: Vec<f32> = scores.view([-1]).try_into().unwrap();
        let mut want = 0.0;
        for (r, &qi) in b.rows.iter().enumerate() {
            let row = &s[qi * nd as usize..(qi + 1) * nd as usize];
            let lse = row
                .iter()
                .zip(&b.allowed[r])
                .filter(|(_, &a)| a)
                .map(|(&x, _)| f64::from(x).exp())
                .sum::<f64>()
                .ln();
            want += lse - f64::from(row[b.targets[r] as usize]);
        }
        want /= b.rows.len() as f64;
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }
}
