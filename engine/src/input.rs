//! Reading texts given on the command line or in files.

use std::io::BufRead;
use std::path::Path;

use crate::error::{bail, Context, Result};

/// Rejects empty and whitespace-only text: it holds no token to encode.
pub fn check_text(text: &str, what: &str) -> Result<()> {
    if text.trim().is_empty() {
        bail!("{what} is empty (or only whitespace): there is nothing to encode");
    }
    Ok(())
}

/// Reads one text per line from `path` (`-` for standard input).
///
/// Errors name the file and line: invalid UTF-8, and empty or whitespace-only
/// lines. Nothing is encoded unless every line is valid.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let name = path.display().to_string();
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("{name}: cannot open"))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut out = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let lineno = i + 1;
        let mut bytes = line.with_context(|| format!("{name}: read error"))?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            crate::error::err!(
                "{name}:{lineno}: invalid UTF-8 at byte {}",
                e.utf8_error().valid_up_to() + 1
            )
        })?;
        check_text(&text, &format!("{name}:{lineno}: line"))?;
        out.push(text);
    }
    if out.is_empty() {
        bail!("{name}: no lines to encode");
    }
    Ok(out)
}
