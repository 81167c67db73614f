//! The library's way to run a command in its own networked namespace
//! (`Plan::run`, `NsChild`), through the `run_command` example, as root
//! and rootless with the library's defaults: the command's status comes
//! back, and nothing it started outlives the program, even after SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use slirpnet_tests::{
    built_example, live_pids_with_argv, require, require_slirp, rootless_possible, unique_sleeps,
    wait_until, world_runnable,
};

fn example() -> PathBuf {
    built_example("slirpnet", "run_command")
}

/// The example, run directly or, with `as_user`, as that uid without
/// capabilities.
fn example_as(bin: &Path, as_user: Option<u32>) -> Command {
    match as_user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "--inh-caps=-all".into(),
            ]);
            c.arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// The default check (tap0 routed, resolv.conf naming slirp4netns's DNS),
/// then a command's own exit status, then its pid namespace and /proc.
fn runs_networked(bin: &Path, as_user: Option<u32>) {
    let out = example_as(bin, as_user).current_dir("/").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("nameserver 10.0.2.3"), "{stdout}\n{stderr}");

    let out = example_as(bin, as_user)
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
    let (a, b) = unique_sleeps();
    let mut child = example_as(bin, as_user)
        .args(["sh", "-c"])
        .arg(format!("sleep {a} & sleep {b} & echo ready; wait"))
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the command did not start");
    let (a, b) = (a.to_string(), b.to_string());
    let sleeps = || {
        [&a, &b]
            .iter()
            .flat_map(|s| live_pids_with_argv(&["sleep", s]))
            .collect::<Vec<u32>>()
    };
    assert!(
        wait_until(Duration::from_secs(10), || sleeps().len() == 2),
        "the background sleeps did not start"
    );
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
