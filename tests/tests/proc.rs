//! slirp-proc: spawning, readiness, death detection, fd hygiene, accept_dad.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use slirp_opts::{Features, Invocation, NetworkOptions, Target};
use slirp_proc::{Exit, Slirp, SlirpCommand, StartError};
use slirpnet_tests::{fake_slirp, pid_exists, real_slirp, require, Netns, PersistentNetns};

fn command(bin: &std::path::Path, target: Target) -> SlirpCommand {
    let mut opts = NetworkOptions::default();
    opts.enable_ipv6 = false;
    SlirpCommand::new(bin, opts, Features::all(), Invocation::new(target))
}

/// The fds of a process: number -> link target.
fn fds_of(pid: u32) -> BTreeMap<i32, String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.parse().ok()?;
            Some((
                n,
                std::fs::read_link(e.path())
                    .ok()?
                    .to_string_lossy()
                    .into_owned(),
            ))
        })
        .collect()
}

#[test]
fn only_the_two_pipes_reach_the_child() {
    // A leaky library: an fd without close-on-exec.
    let leak = tempfile::NamedTempFile::new().unwrap();
    let leaked = nix::unistd::dup(&leak).unwrap(); // dup(2) never sets FD_CLOEXEC
    let flags = nix::fcntl::fcntl(&leaked, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_eq!(
        flags & libc_fd_cloexec(),
        0,
        "the leak must really lack FD_CLOEXEC"
    );
    // The fake writes its ready byte and becomes `sleep`, keeping every fd it got.
    let (_fake_dir, fake) = fake_slirp("printf 1 >&3\nexec sleep 30").unwrap();
    let slirp = Slirp::start(&command(&fake, Target::Pid(1))).unwrap();
    // The ready byte comes from the shell; look once it has become sleep.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{}/comm", slirp.pid()))
        .unwrap_or_default()
        .trim()
        != "sleep"
    {
        assert!(Instant::now() < deadline, "the fake never exec'd sleep");
        std::thread::sleep(Duration::from_millis(5));
    }
    let fds = fds_of(slirp.pid());
    assert_eq!(
        fds.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2, 3, 4],
        "{fds:?}"
    );
    assert_eq!(fds[&0], "/dev/null");
    assert!(
        fds[&1].ends_with("(deleted)") && fds[&1] == fds[&2],
        "stdout and stderr: the unlinked log: {fds:?}"
    );
    assert!(
        fds[&3].starts_with("pipe:") && fds[&4].starts_with("pipe:"),
        "{fds:?}"
    );
    let leak_name = leak.path().to_string_lossy().into_owned();
    assert!(
        fds.values().all(|t| !t.contains(&leak_name)),
        "leaked fd {} reached the child: {fds:?}",
        leaked.as_raw_fd()
    );
    let pid = slirp.pid();
    assert_eq!(
        slirp.stop(Duration::from_secs(1)),
        Exit::Signal(9),
        "sleep ignores the exit pipe, so it is killed"
    );
    assert!(!pid_exists(pid), "reaped");
}

fn libc_fd_cloexec() -> i32 {
    nix::fcntl::FdFlag::FD_CLOEXEC.bits()
}

#[test]
fn a_failing_slirp4netns_is_reported_at_once_with_its_output() {
    let stamp = tempfile::NamedTempFile::new().unwrap();
    // The fake notes when it exits (ns since the epoch), so the time measured
    // is from its death to our report, however slow the machine is to start it.
    let (_d, fake) = fake_slirp(&format!(
        "echo 'fake slirp4netns: cannot open /dev/net/tun: boom' >&2\ndate +%s%N > {}\nexit 1",
        stamp.path().display()
    ))
    .unwrap();
    let err = Slirp::start(&command(&fake, Target::Pid(1))).unwrap_err();
    let seen = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let exited = std::fs::read_to_string(stamp.path()).unwrap();
    let exited = Duration::from_nanos(exited.trim().parse().unwrap());
    let took = seen.saturating_sub(exited);
    assert!(
        matches!(
            &err,
            StartError::Failed {
                exit: Exit::Code(1),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "slirp4netns failed: fake slirp4netns: cannot open /dev/net/tun: boom (exit status 1)"
    );
    // containers-common notices only at its next 1 s tick (the ready timeout
    // here is 30 s); a pidfd sees it at once.
    assert!(
        took < Duration::from_millis(900),
        "seen {took:?} after it exited"
    );
}

#[test]
fn a_kill_while_waiting_is_seen_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let (_d, fake) =
        fake_slirp(&format!("echo $$ > {}\nexec sleep 30", pidfile.display())).unwrap();
    let waiter = nix::unistd::gettid();
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the fake never started");
            std::thread::sleep(Duration::from_millis(10));
        };
        // Kill only once the starter waits for it: its thread is in poll(2)
        // (the kernel's /proc/self/task/TID/syscall names the call).
        while !in_poll(waiter) {
            assert!(Instant::now() < deadline, "Slirp::start never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        Instant::now()
    });
    let err = Slirp::start(&command(&fake, Target::Pid(1))).unwrap_err();
    let seen = Instant::now();
    let killed_at = killer.join().unwrap();
    assert!(
        matches!(err, StartError::Killed { signal: 9, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("slirp4netns killed by signal 9 (SIGKILL)"),
        "{err}"
    );
    assert!(
        seen.duration_since(killed_at) < Duration::from_millis(500),
        "seen {:?} after the kill",
        seen.duration_since(killed_at)
    );
}

#[test]
fn no_ready_byte_in_time_is_a_timeout_and_the_process_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let (_d, fake) = fake_slirp(&format!(
        "echo $$ > {}\necho still starting\nexec sleep 30",
        pidfile.display()
    ))
    .unwrap();
    let mut cmd = command(&fake, Target::Pid(1));
    cmd.ready_timeout = Duration::from_millis(300);
    let err = Slirp::start(&cmd).unwrap_err();
    assert_eq!(
        err.to_string(),
        "slirp4netns did not become ready within 300ms; its output: still starting"
    );
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !pid_exists(pid),
        "timed-out slirp4netns {pid} must be killed and reaped"
    );
}

#[test]
fn a_wrong_ready_byte_is_an_error() {
    let (_d, fake) = fake_slirp("printf x >&3\nexec sleep 30").unwrap();
    let err = Slirp::start(&command(&fake, Target::Pid(1))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "slirp4netns wrote 0x78 to the ready pipe instead of '1'"
    );
}

#[test]
fn a_missing_binary_is_a_clear_error() {
    let err = Slirp::start(&command(
        "/nonexistent/slirp4netns".as_ref(),
        Target::Pid(1),
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("failed to start /nonexistent/slirp4netns: "),
        "{err}"
    );
}

#[test]
fn real_slirp4netns_starts_stops_and_restores_accept_dad() {
    let bin = match real_slirp() {
        Ok(b) => b,
        Err(e) => {
            require(
                "real_slirp4netns_starts_stops_and_restores_accept_dad",
                Err(e),
            );
            return;
        }
    };
    let made = PersistentNetns::new("dad").unwrap();
    let ns = made.open();
    let dad = "/proc/sys/net/ipv6/conf/default/accept_dad";
    ns.run(|| std::fs::write(dad, "2")).unwrap().unwrap();
    let accept_dad = || {
        ns.run(|| std::fs::read_to_string(dad))
            .unwrap()
            .unwrap()
            .trim()
            .to_owned()
    };

    let target = Target::Path {
        netns: made.path.clone(),
        userns: None,
    };
    let opts = NetworkOptions::default(); // IPv6 on
    let mut cmd = SlirpCommand::new(&bin, opts, Features::all(), Invocation::new(target.clone()));
    assert!(cmd.toggle_accept_dad && cmd.new_mount_ns);
    cmd.ready_timeout = Duration::from_secs(10);
    let mut slirp = Slirp::start(&cmd).unwrap();
    assert_eq!(accept_dad(), "2", "restored after ready");
    // tap0's IPv6 address is not tentative: DAD was off when tap0 was made
    // (an interface keeps the default it was made with), so whenever
    // slirp4netns's router advertisement gives it its address (after ready,
    // on a loaded machine), no DAD runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (if_inet6, tap_line) = loop {
        let if_inet6 = ns
            .run(|| std::fs::read_to_string("/proc/thread-self/net/if_inet6"))
            .unwrap()
            .unwrap();
        let tap_line = if_inet6
            .lines()
            .find(|l| l.ends_with("tap0") && l.starts_with("fd00"))
            .unwrap_or_default()
            .to_owned();
        if !tap_line.is_empty() || std::time::Instant::now() > deadline {
            break (if_inet6, tap_line);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !tap_line.is_empty(),
        "no fd00:: address on tap0 within 10 s: {if_inet6}"
    );
    let flags = u32::from_str_radix(tap_line.split_whitespace().nth(4).unwrap(), 16).unwrap();
    assert_eq!(flags & 0x40, 0, "IFA_F_TENTATIVE set: {tap_line}");

    assert!(slirp.exited_within(Duration::ZERO).is_none());
    let pid = slirp.pid();
    // Closing the exit pipe ends it cleanly (status 0), no kill needed.
    assert_eq!(slirp.stop(Duration::from_secs(5)), Exit::Code(0));
    assert!(!pid_exists(pid));

    // A failure restores accept_dad too.
    let (_d, fake) = fake_slirp("exit 3").unwrap();
    let cmd = SlirpCommand::new(
        &fake,
        NetworkOptions::default(),
        Features::all(),
        Invocation::new(target),
    );
    assert!(Slirp::start(&cmd).is_err());
    assert_eq!(accept_dad(), "2", "restored after failure");
}

#[test]
fn pid_target_and_drop_reaps() {
    let bin = match real_slirp() {
        Ok(b) => b,
        Err(e) => {
            require("pid_target_and_drop_reaps", Err(e));
            return;
        }
    };
    let ns = Netns::new().unwrap();
    let slirp = Slirp::start(&command(&bin, Target::Pid(ns.pid()))).unwrap();
    let pid = slirp.pid();
    assert!(pid_exists(pid));
    drop(slirp);
    assert!(!pid_exists(pid), "drop must stop and reap slirp4netns");
}

/// Whether thread `tid` of this process is blocked in poll(2) or ppoll(2).
fn in_poll(tid: nix::unistd::Pid) -> bool {
    #[cfg(target_arch = "x86_64")]
    const POLLS: &[&str] = &["7", "271"];
    #[cfg(target_arch = "aarch64")]
    const POLLS: &[&str] = &["73"];
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    const POLLS: &[&str] = &[];
    let syscall =
        std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
    let number = syscall.split(' ').next().unwrap_or("");
    POLLS.is_empty() || POLLS.contains(&number)
}
