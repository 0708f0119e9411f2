//! The documents stay true: every relative link in README.md and docs/
//! resolves, and every `tessera …` command in README's shell examples is
//! accepted by the binary's argument parser (each subcommand and flag
//! exists, each value parses).

mod common;

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the engine crate")
        .to_path_buf()
}

/// README.md and every Markdown file under docs/ and the crates' folders.
fn documents() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let r = root();
    let mut out = vec![r.join("README.md")];
    for d in ["docs", "index", "engine", "training", "eval", "proto"] {
        let dir = r.join(d);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        if d == "docs" {
            walk(&dir, &mut out);
            continue;
        }
        // A crate folder: its own Markdown files, not its build outputs.
        out.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "md")),
        );
    }
    out
}

/// `[text](target)` link targets of a Markdown text, outside code blocks.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            out.push((n + 1, rest[..end].trim().to_owned()));
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_documents_resolves() {
    let docs = documents();
    assert!(docs.len() > 3, "found only {docs:?}");
    let mut broken = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for (line, target) in links(&text) {
            let is_url = target
                .split_once(':')
                .is_some_and(|(scheme, _)| scheme.chars().all(|c| c.is_ascii_alphabetic()));
            if is_url || target.starts_with('#') || target.is_empty() {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            let resolved = doc.parent().unwrap().join(path);
            if !resolved.exists() {
                broken.push(format!("{}:{line}: {target}", doc.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Shell words of one command line: whitespace-separated, with single and
/// double quotes (no escapes inside single quotes, `\"` inside double).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') if chars.peek() == Some(&'"') => cur.push(chars.next().unwrap()),
            (None, '#') if !any && cur.is_empty() => break,
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any || !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// The `tessera …` commands of README's `sh` blocks (continued lines
/// joined, pipes and redirections cut off), with their line numbers.
fn readme_commands() -> Vec<(usize, Vec<String>)> {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && (t == "```sh" || t == "```bash");
            continue;
        }
        if !in_sh {
            continue;
        }
        let (start, mut cmd) = match pending.take() {
            Some((s, c)) => (s, c + " " + t),
            None if t.starts_with("tessera ") => (n + 1, t.to_owned()),
            None => continue,
        };
        if cmd.ends_with('\\') {
            cmd.pop();
            pending = Some((start, cmd));
            continue;
        }
        // The part before a pipe, a redirection, `&&` or a background `&`.
        let words: Vec<String> = shell_words(&cmd)
            .into_iter()
            .take_while(|w| !matches!(w.as_str(), "|" | ">" | "2>" | "&&" | "&" | ";"))
            .take_while(|w| !w.starts_with('>') && !w.starts_with("2>"))
            .collect();
        out.push((start, words));
    }
    out
}

#[test]
fn readme_commands_are_accepted_by_the_argument_parser() {
    let commands = readme_commands();
    assert!(commands.len() >= 10, "found only {commands:?}");
    let mut refused = Vec::new();
    for (line, words) in &commands {
        // `--help` after the arguments: clap checks every subcommand, flag
        // and value before it, and prints help instead of running.
        let o = common::tessera_command()
            .args(&words[1..])
            .arg("--help")
            .output()
            .expect("tessera runs");
        if !o.status.success() {
            refused.push(format!(
                "README.md:{line}: {}\n{}",
                words.join(" "),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}

#[test]
fn shell_words_split_like_a_shell() {
    assert_eq!(
        shell_words(r#"tessera search --index x "what causes tides?" -k 3 # note"#),
        [
            "tessera",
            "search",
            "--index",
            "x",
            "what causes tides?",
            "-k",
            "3"
        ]
    );
    assert_eq!(
        shell_words(r#"a --filter '{"eq": {"field": "lang"}}' ''"#),
        ["a", "--filter", r#"{"eq": {"field": "lang"}}"#, ""]
    );
}
