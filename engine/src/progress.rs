//! Progress bars for long jobs (drawn on stderr; hidden when stderr is not
//! a terminal, so logs and tests stay clean).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` units (`None`: a spinner with counts and rate).
pub fn bar(total: Option<u64>, unit: &str) -> ProgressBar {
    let pb = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = match total {
        Some(_) => format!(
            "{{spinner}} {{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
        ),
        None => format!("{{spinner}} {{prefix}} {{pos}} {unit} ({{per_sec}}) {{msg}}"),
    };
    pb.set_style(
        ProgressStyle::with_template(&template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reports a step of a long job on stderr, beside the bars: what is built,
/// reused or skipped, and where (e.g. "using cached index …"). A program
/// embedding the engine silences these with [`set_quiet`].
pub fn note(msg: impl std::fmt::Display) {
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{msg}");
    }
}

/// Turns [`note`]s off (`true`) or on.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}
