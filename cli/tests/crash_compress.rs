//! `kvpress compress` killed with SIGKILL (`Child::kill` on Unix) at random moments never leaves
//! a partial file at `--out`: after every kill the path is absent or holds a complete context
//! that loads. Half the kill points are spread over the whole run, half land while the
//! temporary file is being written. Also: `--out` naming an input is refused before any work.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use rand::Rng;

fn repository_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// A context of about 550 tokens (the start of the bundled haystack), so a run takes seconds.
fn short_context(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repository_file("data/needle-haystack.txt")).unwrap();
    let end = text.char_indices().nth(2000).map_or(text.len(), |(i, _)| i);
    let path = dir.join("context.txt");
    std::fs::write(&path, &text[..end]).unwrap();
    path
}

fn compress(context: &Path, out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvpress"));
    command
        .args(["compress", "--context"])
        .arg(context)
        .arg("--press")
        .arg(repository_file("configs/presses/knorm.toml"))
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command
}

/// Temporary files of `out`'s writers in its folder.
fn temp_files(out: &Path) -> Vec<PathBuf> {
    let prefix = format!(".{}.tmp-", out.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect()
}

/// Polls `child` every millisecond until it exits or `until` says to stop; returns the time
/// `until` first held (relative to `start`), or `None` if the child exited first.
fn poll(
    child: &mut Child,
    start: Instant,
    mut until: impl FnMut(Duration) -> bool,
) -> Option<Duration> {
    loop {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        let now = start.elapsed();
        if until(now) {
            return Some(now);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One complete run: its duration and when its temporary file was first and last seen.
fn reference_run(context: &Path, out: &Path) -> (Duration, Option<(Duration, Duration)>) {
    let start = Instant::now();
    let mut child = compress(context, out).spawn().unwrap();
    let mut window: Option<(Duration, Duration)> = None;
    poll(&mut child, start, |now| {
        if !temp_files(out).is_empty() {
            window = Some((window.map_or(now, |w| w.0), now));
        }
        false
    });
    assert!(child.wait().unwrap().success(), "the reference run fails");
    (start.elapsed(), window)
}

#[test]
fn a_killed_compress_never_leaves_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let context = short_context(dir.path());
    let reference = dir.path().join("reference.kvp");
    let (run_time, window) = reference_run(&context, &reference);
    let write_time = window.map_or(Duration::from_millis(50), |(a, b)| {
        b - a + Duration::from_millis(1)
    });
    let out = dir.path().join("ctx.kvp");
    let mut rng = rand::rng();
    let (mut killed_mid_write, mut finished, mut strays, mut kept) = (0, 0, 0, Vec::new());
    let kill_points = 8;
    for point in 0..kill_points {
        let start = Instant::now();
        let mut child = compress(&context, &out).spawn().unwrap();
        let killed_at = if point % 2 == 0 {
            // Anywhere in the run.
            let at = run_time.mul_f64(rng.random_range(0.05..1.0));
            poll(&mut child, start, |now| now >= at)
        } else {
            // While the temporary file is written: once it appears, a random part of the
            // reference run's write time later.
            let delay = write_time.mul_f64(rng.random_range(0.0..1.0));
            poll(&mut child, start, |_| !temp_files(&out).is_empty())
                .and_then(|seen| poll(&mut child, start, |now| now >= seen + delay))
        };
        let mid_write = !temp_files(&out).is_empty();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        match killed_at {
            Some(at) => {
                killed_mid_write += usize::from(mid_write);
                eprintln!(
                    "kill point {point}: SIGKILL at {:.3} s of a {:.3} s run{}",
                    at.as_secs_f64(),
                    run_time.as_secs_f64(),
                    if mid_write {
                        ", temporary file present"
                    } else {
                        ""
                    }
                );
            }
            None => {
                finished += 1;
                assert!(status.success(), "kill point {point}: the run failed");
                eprintln!("kill point {point}: the run finished before the kill");
            }
        }
        if out.exists() {
            let copy = dir.path().join(format!("after-kill-{point}.kvp"));
            std::fs::copy(&out, &copy).unwrap();
            kept.push(copy);
        }
        // A kill mid-write leaves its temporary file; clear it so the next run's is told apart.
        for stray in temp_files(&out) {
            strays += 1;
            std::fs::remove_file(stray).unwrap();
        }
    }

    // Every file found at the path loads (the model is loaded here only now, so that one
    // model-loading process runs at a time).
    let model = kvpress::models::load_model(
        &kvpress::default_model::require().unwrap(),
        None,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let (_, expected) = kvpress::hooks::context_file::load(&reference, &model).unwrap();
    let mut partial = 0;
    for file in &kept {
        match kvpress::hooks::context_file::load(file, &model) {
            Ok((_, header)) => assert_eq!(header.context_ids, expected.context_ids),
            Err(error) => {
                partial += 1;
                eprintln!("{}: {error}", file.display());
            }
        }
    }
    eprintln!(
        "{} runs (1 reference + {kill_points} killed), {kill_points} kill points: {killed_mid_write} \
         while the temporary file was being written, {finished} after the run had finished; \
         complete files found at --out after a kill: {}, partial files: {partial}, stray \
         temporary files left by kills: {strays}",
        kill_points + 1,
        kept.len()
    );
    assert_eq!(partial, 0, "a kill left a partial file at --out");
}

/// The binary run with no model available (`KVPRESS_HOME` empty): a refusal that names the
/// output, rather than a missing model, shows the check came before any work.
fn kvpress_without_model(home: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvpress"))
        .env("KVPRESS_HOME", home)
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn an_output_naming_an_input_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let context = short_context(dir.path());
    let press = dir.path().join("press.toml");
    std::fs::copy(repository_file("configs/presses/knorm.toml"), &press).unwrap();
    let before = std::fs::read(&context).unwrap();
    let dotted = dir.path().join(".").join("context.txt");
    let link = dir.path().join("link.kvp");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&press, &link).unwrap();
    let mut cases = vec![(dotted.clone(), "--context"), (press.clone(), "--press")];
    if link.exists() {
        cases.push((link.clone(), "--press"));
    }
    let home = tempfile::tempdir().unwrap();
    for (out, flag) in &cases {
        let output = kvpress_without_model(
            home.path(),
            &[
                "compress".as_ref(),
                "--context".as_ref(),
                context.as_os_str(),
                "--press".as_ref(),
                press.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains(&format!("is the same file as {flag}")),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read(&context).unwrap(), before);

    let prompt = dir.path().join("prompt.json");
    std::fs::write(
        &prompt,
        r#"{"context": "The code is 1.", "question": " Code?"}"#,
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let output = kvpress_without_model(
        home.path(),
        &[
            "trace".as_ref(),
            "--prompt".as_ref(),
            prompt.as_os_str(),
            "--out".as_ref(),
            dir.path().join("sub/../prompt.json").as_os_str(),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("is the same file as --prompt"), "{stderr}");
    assert!(std::fs::read_to_string(&prompt)
        .unwrap()
        .contains("The code is 1."));
}
