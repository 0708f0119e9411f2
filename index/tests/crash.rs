//! Crash safety: a child process builds, appends, deletes and compacts in a
//! loop and is killed with SIGKILL at varying moments; after each kill the
//! index path holds either nothing or a complete index that opens and
//! verifies.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tessera_index::synthetic::Synthetic;
use tessera_index::*;

const CHILD_ENV: &str = "TESSERA_CRASH_CHILD_PATH";

fn syn() -> Synthetic {
    Synthetic {
        dim: 32,
        topics: 32,
        min_len: 10,
        max_len: 60,
        noise: 0.5,
        seed: 11,
    }
}

/// Runs only inside the child process: writes to the index forever.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let path = Path::new(&path);
    let mut round = 0usize;
    loop {
        let opts = BuildOptions {
            overwrite: true,
            memory_budget: 256 * 1024,
            ..BuildOptions::default()
        };
        let mut b = IndexBuilder::create(path, opts).unwrap();
        for d in syn().documents(0, 400) {
            b.add(d).unwrap();
        }
        b.finish(&mut |_| {}).unwrap();
        append(path, syn().documents(1000 + round * 100, 100)).unwrap();
        delete(path, &["doc1", "doc2", "doc3"]).unwrap();
        compact(path).unwrap();
        round += 1;
    }
}

fn run_and_kill(path: &Path, ms: u64) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn build_small(path: &Path) {
    let opts = BuildOptions {
        overwrite: true,
        ..BuildOptions::default()
    };
    let mut b = IndexBuilder::create(path, opts).unwrap();
    for d in syn().documents(0, 20) {
        b.add(d).unwrap();
    }
    b.finish(&mut |_| {}).unwrap();
}

#[test]
fn killed_first_build_leaves_no_index_or_a_complete_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    for ms in [5u64, 40, 120, 400] {
        run_and_kill(&path, ms);
        if path.join("manifest.json").exists() {
            let index = Index::open(&path).unwrap_or_else(|e| panic!("kill after {ms} ms: {e}"));
            index
                .verify()
                .unwrap_or_else(|e| panic!("kill after {ms} ms: {e}"));
        } else {
            assert!(
                !path.exists(),
                "kill after {ms} ms: a folder without manifest at the index path"
            );
        }
        let _ = std::fs::remove_dir_all(&path);
    }
}

#[test]
fn killed_rebuilds_and_updates_leave_a_complete_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx");
    build_small(&path);
    for (i, ms) in [
        5u64, 30, 60, 90, 130, 170, 220, 300, 400, 550, 700, 900, 1200,
    ]
    .iter()
    .enumerate()
    {
        run_and_kill(&path, *ms);
        let index = Index::open(&path).unwrap_or_else(|e| panic!("kill #{i} after {ms} ms: {e}"));
        index
            .verify()
            .unwrap_or_else(|e| panic!("kill #{i} after {ms} ms: {e}"));
        assert!(
            index.num_docs() == 20 || index.num_docs() >= 397,
            "kill #{i}: {} docs",
            index.num_docs()
        );
    }
    // Staging folders of killed builds are cleaned up by the next build.
    build_small(&path);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("idx")], "{left:?}");
}
