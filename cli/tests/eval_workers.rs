//! `kvpress eval --jobs N`: the workers stop with their parent (killed with SIGKILL, or
//! stopped with SIGTERM, which it passes on), `--jobs` is capped at what is useful, and
//! `--jobs 0` is refused.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tests that start model-loading processes run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A grid of two samples, long enough that its workers are still running when the test stops
/// their parent.
fn grid(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("eval.toml");
    std::fs::write(
        &path,
        "tasks = [\"niah_single\"]\ncontext_lengths = [2048]\nsamples = 2\n\
         compression_ratios = [0.5]\n\n[[presses]]\nname = \"knorm\"\n\
         config = { press = \"knorm\" }\n",
    )
    .unwrap();
    path
}

/// Starts `kvpress eval --jobs 64` of `config` into `out`, its stderr going to `log`.
fn start_eval(config: &Path, out: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kvpress"))
        .args(["eval", "--config", config.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--jobs", "64"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("the binary runs")
}

/// Pids of the running eval workers writing to `out` (found by their `--shard` argument and
/// their `--out`).
fn workers_of(out: &Path) -> Vec<u32> {
    let out = out.to_str().unwrap();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "--shard") && args.iter().any(|a| a == out) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until `count` workers of `out` run; panics (with the run's stderr) after a minute.
fn wait_for_workers(out: &Path, count: usize, log: &Path) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let pids = workers_of(out);
        if pids.len() >= count {
            return pids;
        }
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{count} workers did not start: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to `limit` for no worker of `out` to remain; returns those left.
fn workers_left_after(out: &Path, limit: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left = workers_of(out);
        if left.is_empty() || start.elapsed() > limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[test]
fn workers_stop_when_their_parent_is_killed_or_stopped() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if cores() < 2 {
        eprintln!("one core: --jobs is capped to 1, no worker to test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = grid(dir.path());

    // SIGKILL: the parent cannot pass anything on; the workers notice it is gone.
    let out = dir.path().join("killed");
    let log = dir.path().join("killed.log");
    let mut parent = start_eval(&config, &out, &log);
    let workers = wait_for_workers(&out, 2, &log);
    assert_eq!(workers.len(), 2, "capped to the 2 samples: {workers:?}");
    parent.kill().unwrap();
    parent.wait().unwrap();
    let left = workers_left_after(&out, Duration::from_secs(5));
    for pid in &left {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(left.is_empty(), "workers {left:?} outlived their parent");
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("note: --jobs 64 capped to 2:"),
        "the cap is said: {stderr}"
    );

    // SIGTERM: the parent passes it on, waits for its workers, and fails saying so.
    let out = dir.path().join("stopped");
    let log = dir.path().join("stopped.log");
    let mut parent = start_eval(&config, &out, &log);
    wait_for_workers(&out, 2, &log);
    let sent = Command::new("kill")
        .args(["-TERM", &parent.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = parent.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            parent.kill().unwrap();
            panic!("the parent did not stop after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("interrupted by signal 15: the workers were stopped"),
        "{stderr}"
    );
    let left = workers_of(&out);
    assert!(left.is_empty(), "workers {left:?} outlived their parent");
}

#[test]
fn jobs_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kvpress"))
        .args(["eval", "--config", grid(dir.path()).to_str().unwrap()])
        .args(["--jobs", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("'--jobs <JOBS>'") && stderr.contains("at least 1"),
        "{stderr}"
    );
}
