//! slirp-proc's podman-style helper start: stdin, fds 3 and 4, the error
//! line, the ready byte, death and timeout, stopping. The helpers are small
//! shell scripts, each doing one thing a real helper may do.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use slirp_proc::{Exit, HelperCommand, HelperError, HelperStderr};
use slirpnet_tests::pid_exists;

/// A helper script with `body`, and the directory that holds it.
fn script(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("helper");
    slirpnet_tests::write_runnable(&path, format!("#!/bin/sh\n{body}\n").as_bytes()).unwrap();
    (dir, path)
}

/// A helper script that first writes its pid to a file, then runs `body`;
/// the pid is read back with [`noted_pid`].
fn script_noting_pid(body: &str) -> (tempfile::TempDir, PathBuf) {
    script(&format!("echo $$ > \"$(dirname \"$0\")/pid\"\n{body}"))
}

fn noted_pid(dir: &tempfile::TempDir) -> u32 {
    std::fs::read_to_string(dir.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn command(path: &PathBuf, stdin: &[u8]) -> HelperCommand {
    let mut cmd = HelperCommand::new(path, "rootlessport", stdin.to_vec());
    cmd.stderr = HelperStderr::Null;
    cmd
}

#[test]
fn a_ready_helper_gets_stdin_and_stops_when_the_exit_pipe_closes() {
    let out = tempfile::NamedTempFile::new().unwrap();
    // Copies stdin, says ready, then waits for EOF on fd 3 as podman's
    // helper does.
    let (_d, path) = script(&format!(
        "cat > {}\nprintf 1 >&4\nread x <&3\nexit 0",
        out.path().display()
    ));
    let config = br#"{"Mappings":[],"NetNSPath":"/x"}"#;
    let helper = command(&path, config).start().unwrap();
    let pid = helper.pid();
    // While it waits on fd 3: the shell reads its script on one fd of its
    // own (10 in dash), so fds below 10 are ours to judge: 0 to 4, no more.
    let fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|f| *f < 10)
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .collect();
    assert_eq!(fds, [0, 1, 2, 3, 4]);
    let started = Instant::now();
    assert_eq!(helper.stop(Duration::from_secs(5)), Ok(Exit::Code(0)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it ended by itself"
    );
    assert!(!pid_exists(pid), "reaped");
    assert_eq!(std::fs::read(out.path()).unwrap(), config);
}

#[test]
fn a_failing_helper_is_reported_with_its_line_and_exit_status() {
    let (_d, path) = script("echo 'cannot expose privileged port 80: permission denied'\nexit 1");
    let err = command(&path, b"{}").start().unwrap_err();
    match &err {
        HelperError::Failed { line, exit, .. } => {
            assert_eq!(line, "cannot expose privileged port 80: permission denied");
            assert_eq!(*exit, Exit::Code(1));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().ends_with(
            "helper failed: cannot expose privileged port 80: permission denied (exit status 1)"
        ),
        "{err}"
    );
}

#[test]
fn a_helper_that_exits_without_reading_stdin_is_still_reported() {
    // A large configuration fills the pipe; the helper never reads it.
    let (_d, path) = script("echo 'bad'\nexit 2");
    let err = command(&path, &vec![b' '; 1 << 20]).start().unwrap_err();
    assert!(
        matches!(&err, HelperError::Failed { line, exit: Exit::Code(2), .. } if line == "bad"),
        "{err:?}"
    );
}

#[test]
fn a_killed_helper_is_seen_at_once() {
    let (_d, path) = script("kill -9 $$");
    let started = Instant::now();
    let err = command(&path, b"{}").start().unwrap_err();
    assert!(
        matches!(
            &err,
            HelperError::Failed {
                exit: Exit::Signal(9),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("signal 9 (SIGKILL)"), "{err}");
    // The ready timeout is 30 s: the death, not the timeout, ended the wait.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_wrong_ready_byte_is_an_error_and_the_helper_is_killed() {
    let (dir, path) = script_noting_pid("printf x >&4\nexec sleep 30");
    let err = command(&path, b"{}").start().unwrap_err();
    assert!(
        matches!(err, HelperError::BadReadyByte { byte: b'x', .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("wrote 0x78"), "{err}");
    assert!(!pid_exists(noted_pid(&dir)), "killed and reaped");
}

#[test]
fn a_helper_that_never_gets_ready_times_out_and_is_killed() {
    let (dir, path) = script_noting_pid("exec sleep 30");
    let mut cmd = command(&path, b"{}");
    cmd.ready_timeout = Duration::from_millis(300);
    let err = cmd.start().unwrap_err();
    assert!(
        matches!(err, HelperError::Timeout { timeout, .. } if timeout == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("did not become ready within 300ms"),
        "{err}"
    );
    assert!(!pid_exists(noted_pid(&dir)), "killed and reaped");
}

#[test]
fn a_helper_that_ignores_the_exit_pipe_is_killed_after_the_grace() {
    let (_d, path) = script("printf 1 >&4\nexec sleep 30");
    let helper = command(&path, b"{}").start().unwrap();
    let pid = helper.pid();
    assert_eq!(
        helper.stop(Duration::from_millis(100)),
        Err(Exit::Signal(9))
    );
    assert!(!pid_exists(pid));
}

#[test]
fn a_missing_binary_is_a_spawn_error() {
    let err = command(&PathBuf::from("/nonexistent/rootlessport"), b"{}")
        .start()
        .unwrap_err();
    assert!(matches!(err, HelperError::Spawn { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("failed to start /nonexistent/rootlessport: "),
        "{err}"
    );
}
