//! What this crate does with and without privilege. Every test runs as any
//! user: without CAP_SYS_ADMIN it checks the refusal instead of the work.

use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};

use netns_util::{
    create_persistent, has_cap, interface_info, remove_persistent, require_cap, Capability,
    IfaceError, Netns, NetnsError, PersistError, PrivilegeError,
};

fn privileged() -> bool {
    has_cap(Capability::CAP_SYS_ADMIN)
}

/// The message is complete and says its cause once; no source repeats it.
fn check_message(err: &(dyn Error + 'static)) {
    let text = err.to_string();
    assert!(!text.ends_with('.'), "{text}");
    if let Some(source) = err.source() {
        assert!(
            !text.contains(&source.to_string()),
            "{text} repeats its source"
        );
    }
}

#[test]
fn open_refuses_what_is_not_a_network_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"x").unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let sock = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    for (path, found) in [
        (plain.as_path(), "a regular file"),
        (dir.path(), "a directory"),
        (fifo.as_path(), "a FIFO"),
        (sock.as_path(), "a socket"),
        (std::path::Path::new("/dev/null"), "a device"),
    ] {
        let err = Netns::open(path).unwrap_err();
        assert!(
            matches!(&err, NetnsError::NotANamespace { path: p, found: f } if p == path && *f == found),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "{} is not a namespace file but {found}",
                path.display()
            )),
            "{err}"
        );
        check_message(&err);
        assert!(err.source().is_none());
    }

    for other in ["/proc/self/ns/uts", "/proc/self/ns/user"] {
        let err = Netns::open(other).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{other} is a namespace, but not a network namespace")
        );
    }

    let missing = dir.path().join("missing");
    let err = Netns::open(&missing).unwrap_err();
    let NetnsError::Open { path, error } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(path, &missing);
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    // The OS error's text is in the message once, and not the source.
    assert_eq!(
        err.to_string(),
        format!(
            "failed to open network namespace {}: {error}",
            missing.display()
        )
    );
    assert!(err.source().is_none());
}

#[test]
fn the_current_namespace_is_ours() {
    let ns = Netns::current().unwrap();
    assert_eq!(ns.path(), std::path::Path::new("/proc/thread-self/ns/net"));
    let by_pid = Netns::open(format!("/proc/{}/ns/net", std::process::id())).unwrap();
    assert_eq!(ns.id().unwrap(), by_pid.id().unwrap());
    assert_ne!(
        ns.id().unwrap(),
        (0, 0),
        "an id is the namespace file's device and inode"
    );
}

#[test]
fn run_works_inside_or_says_which_privilege_is_missing() {
    let ns = Netns::current().unwrap();
    let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let ran = AtomicBool::new(false);
    let result = ns.run(|| {
        ran.store(true, Ordering::SeqCst);
        (
            std::thread::current().name().map(str::to_owned),
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        )
    });
    if privileged() {
        let (name, inside) = result.unwrap();
        assert_eq!(name.as_deref(), Some("netns"));
        assert_eq!(inside, before, "joining our own namespace changes nothing");

        // A panic inside comes back as an error with its message.
        let err = ns.run(|| -> u8 { panic!("boom") }).unwrap_err();
        assert!(
            matches!(&err, NetnsError::Panicked { message, .. } if message == "boom"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the thread in network namespace /proc/thread-self/ns/net panicked: boom"
        );

        // A long-lived thread inside.
        let handle = ns.spawn("inside", || 7).unwrap();
        assert_eq!(handle.join().unwrap(), Some(7));
    } else {
        let err = result.unwrap_err();
        assert!(
            !ran.load(Ordering::SeqCst),
            "work ran outside the namespace"
        );
        let NetnsError::Privilege(p) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(p.cap, Capability::CAP_SYS_ADMIN);
        assert_eq!(
            err.to_string(),
            "joining network namespace /proc/thread-self/ns/net needs CAP_SYS_ADMIN in this process's own user namespace as well as in the namespace's owning one (a process that owns the namespace but lacks it there cannot join it; a helper process that first joins the owning user namespace can)"
        );
        assert!(err.source().is_none());

        let spawned = AtomicBool::new(false);
        let spawned = std::sync::Arc::new(spawned);
        let flag = spawned.clone();
        let err = ns
            .spawn("inside", move || flag.store(true, Ordering::SeqCst))
            .unwrap_err();
        assert!(matches!(err, NetnsError::Privilege(_)), "{err:?}");
        assert!(!spawned.load(Ordering::SeqCst));
    }
    // Either way, the calling thread never moved.
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );
}

#[test]
fn interface_info_reads_lo_or_says_why_not() {
    let ns = Netns::current().unwrap();
    if privileged() {
        let lo = interface_info(&ns, "lo").unwrap();
        assert_eq!(lo.name, "lo");
        // lo's link-layer address is all zeros, written as a MAC.
        assert_eq!(lo.mac.as_deref(), Some("00:00:00:00:00:00"));
        if lo.up {
            assert!(
                lo.addresses.contains(&("127.0.0.1".parse().unwrap(), 8)),
                "{lo:?}"
            );
        }
        let err = interface_info(&ns, "nosuch0").unwrap_err();
        assert!(
            matches!(&err, IfaceError::NoSuchInterface { name, .. } if name == "nosuch0"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "network namespace /proc/thread-self/ns/net has no interface \"nosuch0\""
        );
    } else {
        let err = interface_info(&ns, "lo").unwrap_err();
        let IfaceError::Netns(inner @ NetnsError::Privilege(_)) = &err else {
            panic!("{err:?}")
        };
        // Transparent: the same message, no second copy in a source.
        assert_eq!(err.to_string(), inner.to_string());
        assert!(err.source().is_none());
    }
}

#[test]
fn persistent_namespaces_are_made_and_removed_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("ns");
    // Removing what is not there is fine, with or without privilege.
    remove_persistent(&path).unwrap();

    if privileged() {
        create_persistent(&path).unwrap();
        let made = Netns::open(&path).unwrap();
        assert_ne!(made.id().unwrap(), Netns::current().unwrap().id().unwrap());
        drop(made);
        let err = create_persistent(&path).unwrap_err();
        assert!(matches!(err, PersistError::Exists { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("{} already exists", path.display())
        );
        remove_persistent(&path).unwrap();
        assert!(!path.exists());
    } else {
        let err = create_persistent(&path).unwrap_err();
        let PersistError::Privilege(p) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(p.cap, Capability::CAP_SYS_ADMIN);
        assert!(
            err.to_string().starts_with(&format!(
                "creating network namespace {} needs CAP_SYS_ADMIN",
                path.display()
            )),
            "{err}"
        );
        assert!(!path.exists() && !path.parent().unwrap().exists());
        // Unmounting is refused too, and the file is left alone.
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let err = remove_persistent(&plain).unwrap_err();
        assert!(matches!(err, PersistError::Privilege(_)), "{err:?}");
        assert!(plain.exists());
    }
}

#[test]
fn privilege_checks_name_the_action_and_the_capability() {
    let err = PrivilegeError::new(
        "adding a route",
        Capability::CAP_NET_ADMIN,
        "in this namespace",
    );
    assert_eq!(
        err.to_string(),
        "adding a route needs CAP_NET_ADMIN in this namespace"
    );
    match require_cap(Capability::CAP_SYS_ADMIN, "mounting", "here") {
        Ok(()) => assert!(privileged()),
        Err(e) => {
            assert!(!privileged());
            assert_eq!(
                e,
                PrivilegeError::new("mounting", Capability::CAP_SYS_ADMIN, "here")
            );
        }
    }
}

/// `open_inside` hands back what it made inside, in order; an item that
/// cannot be made is named in the error, and nothing is returned.
#[test]
fn open_inside_makes_sockets_and_files() {
    let ns = Netns::current().unwrap();
    let items = [
        netns_util::Inside::Socket {
            domain: nix::libc::AF_INET,
            ty: nix::libc::SOCK_DGRAM,
            protocol: 0,
        },
        netns_util::Inside::ReadOnly(c"/proc/sys/net/ipv4/ip_local_port_range"),
    ];
    match ns.open_inside(None, &items) {
        Ok(fds) => {
            assert!(privileged());
            assert_eq!(fds.len(), 2);
            for fd in &fds {
                let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD);
                assert_eq!(
                    flags.unwrap() & nix::libc::FD_CLOEXEC,
                    nix::libc::FD_CLOEXEC
                );
            }
        }
        Err(NetnsError::Privilege(_)) => assert!(!privileged()),
        Err(e) => panic!("{e}"),
    }
    if !privileged() {
        return;
    }
    let err = ns
        .open_inside(None, &[netns_util::Inside::ReadOnly(c"/nonexistent/file")])
        .unwrap_err();
    assert!(matches!(err, NetnsError::Inside { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(
            "failed to make /nonexistent/file in network namespace /proc/thread-self/ns/net: "
        ),
        "{err}"
    );
    check_message(&err);
    let too_many = [items[0]; netns_util::MAX_INSIDE + 1];
    assert!(matches!(
        ns.open_inside(None, &too_many),
        Err(NetnsError::Inside { .. })
    ));
}

/// Set in the copy of this test binary that runs in a user namespace of
/// its own (made by `unshare`) for the test below.
const IN_OWN_USERNS: &str = "NETNS_UTIL_TEST_IN_OWN_USERNS";

/// With CAP_SYS_ADMIN only in a user namespace of one's own (`unshare -r`
/// without `-m`), the bind mount is refused; the error says what is missing
/// and how a rootless caller gets it, and nothing is left at the path.
#[test]
fn a_refused_bind_mount_says_a_mount_namespace_is_needed() {
    if let Some(dir) = std::env::var_os(IN_OWN_USERNS) {
        let path = std::path::Path::new(&dir).join("ns");
        let err = create_persistent(&path).unwrap_err();
        let PersistError::Privilege(p) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(p.cap, Capability::CAP_SYS_ADMIN);
        let text = err.to_string();
        assert!(text.contains("mount namespace"), "{text}");
        assert!(
            text.contains("unshare --user --map-root-user --mount"),
            "{text}"
        );
        check_message(&err);
        assert!(!path.exists());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_refused_bind_mount_says_a_mount_namespace_is_needed",
            "--nocapture",
        ])
        .env(IN_OWN_USERNS, dir.path())
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) if status.code() == Some(1) && std::env::var_os("CI").is_none() => {
            // unshare itself failed (no user namespaces here) or the test
            // did: tell them apart by running unshare alone.
            let alone = std::process::Command::new("unshare")
                .args(["--user", "--map-root-user", "true"])
                .status();
            assert!(
                !alone.is_ok_and(|s| s.success()),
                "the test in a user namespace failed: {status}"
            );
            eprintln!("skipped: no user namespaces here (with CI=true this fails)");
        }
        other => panic!("the test in a user namespace failed: {other:?}"),
    }
}
