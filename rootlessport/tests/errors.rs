//! The error convention of this crate: each error prints its cause once,
//! in its message or through `source()`, never both. No privilege needed:
//! the failures are real where they can be made without it.

use std::error::Error;
use std::io;
use std::net::{IpAddr, Ipv4Addr, TcpListener};

use rootlessport::slirp_opts::portctl::PortKey;
use rootlessport::slirp_opts::{Forward, Protocol};
use rootlessport::source_ip::SourceIpError;
use rootlessport::{
    Forwarder, ForwarderConfig, HandleError, ListenError, ReloadError, ReloadServer, StartError,
};

/// No error of the chain repeats the text of its source, and the whole
/// chain, printed as anyhow's `{:#}` would, names the cause once.
fn check(err: &(dyn Error + 'static), cause: &str) {
    let mut chain = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if let Some(source) = e.source() {
            assert!(
                !text.contains(&source.to_string()),
                "{text:?} repeats its source {source:?}"
            );
        }
        chain.push(text);
        next = e.source();
    }
    let all = chain.join(": ");
    assert_eq!(
        all.matches(cause).count(),
        1,
        "{all:?} should name {cause:?} once"
    );
}

const CHILD: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 100));

fn start_error(config: ForwarderConfig) -> StartError {
    Forwarder::start(config.validate().unwrap()).unwrap_err()
}

#[test]
fn every_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let os = |errno| io::Error::from_raw_os_error(errno).to_string();

    // A host port in use: ListenError, through StartError.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let in_use = start_error(
        ForwarderConfig::new("/nonexistent", CHILD).forward(Forward {
            proto: Protocol::Tcp,
            host_ip: Some(Ipv4Addr::LOCALHOST.into()),
            host_port: port,
            container_port: 80,
        }),
    );
    assert!(matches!(
        in_use,
        StartError::Listen(ListenError::Bind { .. })
    ));
    check(&in_use, "Address already in use");

    // A namespace that is not there: netns-util's error, through StartError.
    let no_ns = start_error(ForwarderConfig::new(dir.path().join("no-ns"), CHILD));
    assert!(matches!(no_ns, StartError::Netns(_)), "{no_ns}");
    check(&no_ns, "No such file or directory");

    // The reload socket's directory is a file.
    std::fs::write(dir.path().join("rp"), b"").unwrap();
    let not_dir = ReloadServer::bind(dir.path(), "abc").unwrap_err();
    assert!(matches!(not_dir, ReloadError::Dir { .. }), "{not_dir}");
    check(&not_dir, "not a directory");
    // Nobody at the reload socket.
    let away = tempfile::tempdir().unwrap();
    std::fs::create_dir(away.path().join("rp")).unwrap();
    let nobody = rootlessport::reload(away.path(), "abc", "10.0.2.5").unwrap_err();
    assert!(matches!(nobody, ReloadError::Socket { .. }), "{nobody}");
    check(&nobody, &os(nix::libc::ENOENT));

    // The variants that cannot be made here without privilege.
    let key = PortKey {
        proto: Protocol::Tcp,
        host_ip: None,
        host_port: 8080,
    };
    let made: Vec<(Box<dyn Error>, String)> = vec![
        (
            Box::new(StartError::Runtime {
                error: io::Error::from_raw_os_error(nix::libc::EMFILE),
            }),
            os(nix::libc::EMFILE),
        ),
        (
            Box::new(HandleError::Register {
                key,
                error: io::Error::from_raw_os_error(nix::libc::ENOMEM),
            }),
            os(nix::libc::ENOMEM),
        ),
        (
            Box::new(SourceIpError::Netlink {
                error: io::Error::from_raw_os_error(nix::libc::EPROTONOSUPPORT),
            }),
            os(nix::libc::EPROTONOSUPPORT),
        ),
        (
            Box::new(SourceIpError::Transparent {
                error: io::Error::from_raw_os_error(nix::libc::EPERM),
            }),
            os(nix::libc::EPERM),
        ),
        (
            Box::new(SourceIpError::Lock {
                slot: 3,
                error: io::Error::from_raw_os_error(nix::libc::EADDRINUSE),
            }),
            os(nix::libc::EADDRINUSE),
        ),
        (
            Box::new(SourceIpError::ListRules {
                error: io::Error::from_raw_os_error(nix::libc::EACCES),
            }),
            os(nix::libc::EACCES),
        ),
        (
            Box::new(SourceIpError::ListRoutes {
                error: io::Error::from_raw_os_error(nix::libc::EACCES),
            }),
            os(nix::libc::EACCES),
        ),
        (
            Box::new(SourceIpError::ClearRule {
                table: 7,
                error: io::Error::from_raw_os_error(nix::libc::EPERM),
            }),
            os(nix::libc::EPERM),
        ),
        (
            Box::new(SourceIpError::AddRule {
                rule: "from 10.0.2.100 lookup 7".into(),
                error: io::Error::from_raw_os_error(nix::libc::EEXIST),
            }),
            os(nix::libc::EEXIST),
        ),
        (
            Box::new(StartError::Listen(ListenError::Privileged {
                port: 80,
                start: "1024".into(),
                error: io::Error::from_raw_os_error(nix::libc::EACCES),
            })),
            "Permission denied".into(),
        ),
        (
            Box::new(HandleError::Listen(ListenError::Bind {
                proto: Protocol::Udp,
                addr: "127.0.0.1:53".parse().unwrap(),
                error: io::Error::from_raw_os_error(nix::libc::EADDRINUSE),
            })),
            "Address already in use".into(),
        ),
    ];
    for (err, cause) in &made {
        check(err.as_ref(), cause);
    }
}

#[cfg(feature = "sandbox")]
#[test]
fn sandbox_errors_name_their_cause_once() {
    use rootlessport::sandbox::SandboxError;
    let os = io::Error::from_raw_os_error(nix::libc::EPERM).to_string();
    for err in [
        SandboxError::Handler {
            error: io::Error::from_raw_os_error(nix::libc::EPERM),
        },
        SandboxError::Threads {
            error: io::Error::from_raw_os_error(nix::libc::EPERM),
        },
    ] {
        check(&err, &os);
    }
}
