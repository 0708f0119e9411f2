//! How commands print results (shared by `search` and `query`).

use std::io::Write;

/// One ranked hit as `search` and `query` print it: rank, score, id, the
/// title (or "(no title)"), then a line of text when there is any.
pub fn write_hit(
    w: &mut impl Write,
    rank: usize,
    score: f32,
    id: &str,
    title: &str,
    text: &str,
) -> std::io::Result<()> {
    let title = if title.is_empty() {
        "(no title)"
    } else {
        title
    };
    writeln!(w, "{rank:>3}. {score:>9.4}  {id}  {}", snippet(title, 90))?;
    if !text.is_empty() {
        writeln!(w, "                {}", snippet(text, 160))?;
    }
    Ok(())
}

/// The first `max` characters of `s` on one line, with "…" when cut.
pub fn snippet(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max).collect();
    format!("{}…", cut.trim_end())
}
