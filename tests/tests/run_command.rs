//! The library's way to run a command in its own networked namespace
//! (`Plan::run`, `NsChild`), through the `run_command` example, as root
//! and rootless with the library's defaults: the command's status comes
//! back, and nothing it started outlives the program, even after SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use slirpnet_tests::{
    built_example, live_pids_with_argv, require, require_slirp, rootless_possible, unique_sleeps,
    wait_until, world_runnable,
};
use slirpnet_tests::{command_as, start_with_background_sleeps};

fn example() -> PathBuf {
    built_example("slirpnet", "run_command")
}

/// The default check (tap0 routed, resolv.conf naming slirp4netns's DNS),
/// then a command's own exit status, then its pid namespace and /proc.
fn runs_networked(bin: &Path, as_user: Option<u32>) {
    let out = command_as(bin, as_user).current_dir("/").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("nameserver 10.0.2.3"), "{stdout}\n{stderr}");

    let out = command_as(bin, as_user)
        .args(["sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'; exit 7"])
        .current_dir("/")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // pid 1 is the namespace's init, the command pid 2; /proc shows only
    // the namespace's processes (init, sh, ls, grep).
    assert_eq!(lines.first(), Some(&"2"), "{stdout}");
    let count: u32 = lines.get(1).and_then(|l| l.parse().ok()).unwrap_or(999);
    assert!(count <= 4, "/proc shows {count} processes: {stdout}");
}

#[test]
fn the_example_runs_a_command_networked() {
    if !require_slirp("the_example_runs_a_command_networked") {
        return;
    }
    runs_networked(&example(), None);
}

#[test]
fn the_example_runs_a_command_networked_rootless_with_the_defaults() {
    if !require(
        "the_example_runs_a_command_networked_rootless_with_the_defaults",
        rootless_possible(),
    ) {
        return;
    }
    let (_dir, bins) = world_runnable(&[&example()]).unwrap();
    runs_networked(&bins[0], Some(65534));
}

/// SIGKILL to the program: the command's background children die too.
fn killed_program_leaves_nothing(bin: &Path, as_user: Option<u32>) {
    let mut cmd = command_as(bin, as_user);
    cmd.args(["sh", "-c"]);
    let (mut child, sleeps) = start_with_background_sleeps(cmd);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    assert!(
        wait_until(Duration::from_secs(5), || sleeps().is_empty()),
        "the command's children outlived the killed program: {:?}",
        sleeps()
    );
}

#[test]
fn a_killed_program_leaves_none_of_the_commands_processes() {
    if !require_slirp("a_killed_program_leaves_none_of_the_commands_processes") {
        return;
    }
    killed_program_leaves_nothing(&example(), None);
}

#[test]
fn a_killed_rootless_program_leaves_none_of_the_commands_processes() {
    if !require(
        "a_killed_rootless_program_leaves_none_of_the_commands_processes",
        rootless_possible(),
    ) {
        return;
    }
    let (_dir, bins) = world_runnable(&[&example()]).unwrap();
    killed_program_leaves_nothing(&bins[0], Some(65534));
}

/// A pipe: (read end as a File, write end).
fn pipe() -> (std::fs::File, std::os::fd::OwnedFd) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    (std::fs::File::from(r), w)
}

/// No network needed: the namespaces alone, from this multi-threaded test
/// process.
fn bare() -> slirpnet::NsOptions {
    let mut ns = slirpnet::NsOptions::new();
    ns.nameservers.push("192.0.2.53".parse().unwrap());
    ns
}

#[test]
fn ns_child_runs_the_command_as_asked() {
    if !require(
        "ns_child_runs_the_command_as_asked",
        slirpnet_tests::can_admin_net(),
    ) {
        return;
    }
    use std::io::Read;
    let (mut out, w) = pipe();
    let mut command = slirpnet::NsCommand::new("sh");
    command
        .args(["-c", "echo \"$GREETING $(pwd) $$\"; cat /etc/resolv.conf; readlink /proc/self/ns/net; exit 3"])
        .env("GREETING", "hello")
        .current_dir("/usr")
        .stdout(w);
    let mut child = slirpnet::NsChild::spawn(&command, &bare()).unwrap();
    drop(command); // our copy of the pipe's write end
    assert!(Path::new(&format!("/proc/{}/ns/net", child.pid())).exists());
    child.go().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"hello /usr 2"), "{text}");
    assert!(text.contains("nameserver 192.0.2.53"), "{text}");
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        lines.last().copied(),
        Some(&*ours.to_string_lossy()),
        "{text}"
    );
}

#[test]
fn ns_child_reports_what_cannot_run() {
    if !require(
        "ns_child_reports_what_cannot_run",
        slirpnet_tests::can_admin_net(),
    ) {
        return;
    }
    let e = slirpnet::NsChild::spawn(&slirpnet::NsCommand::new("no-such-program-here"), &bare())
        .unwrap_err();
    assert!(matches!(e, slirpnet::SpawnError::NotFound { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "failed to run no-such-program-here: not found in PATH"
    );
    // Found, but not executable: the exec fails inside, 126 as a shell's.
    let mut child =
        slirpnet::NsChild::spawn(&slirpnet::NsCommand::new("/etc/hostname"), &bare()).unwrap();
    let e = child.go().unwrap_err();
    assert!(
        e.to_string()
            .starts_with("failed to run /etc/hostname: execute the command: "),
        "{e}"
    );
    assert_eq!(child.wait().unwrap().code(), Some(126));
}

#[test]
fn ns_child_passes_signals_on_and_ends_everything() {
    if !require(
        "ns_child_passes_signals_on_and_ends_everything",
        slirpnet_tests::can_admin_net(),
    ) {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    // A plain sleep is pid 2, not pid 1: SIGTERM ends it.
    let mut command = slirpnet::NsCommand::new("sleep");
    command.arg("300");
    let mut child = slirpnet::NsChild::spawn(&command, &bare()).unwrap();
    child.go().unwrap();
    child.signal(Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(15));

    // Dropping the child ends what the command left in the background.
    let (a, b) = unique_sleeps();
    let (mut out, w) = pipe();
    let mut command = slirpnet::NsCommand::new("sh");
    command
        .arg("-c")
        .arg(format!("sleep {a} & sleep {b} & echo ready; wait"))
        .stdout(w);
    let mut child = slirpnet::NsChild::spawn(&command, &bare()).unwrap();
    drop(command);
    child.go().unwrap();
    let mut line = String::new();
    BufReader::new(&mut out).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let (a, b) = (a.to_string(), b.to_string());
    let sleeps = || {
        [&a, &b]
            .iter()
            .flat_map(|s| live_pids_with_argv(&["sleep", s]))
            .collect::<Vec<u32>>()
    };
    assert!(wait_until(Duration::from_secs(10), || sleeps().len() == 2));
    drop(child);
    assert!(
        sleeps().is_empty(),
        "the command's children outlived its NsChild: {:?}",
        sleeps()
    );
}
