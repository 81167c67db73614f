//! What a start without privilege says. Runs as any user: as root it runs
//! itself again as nobody with no capabilities.

use std::time::Duration;

use slirp_proc::{
    Capability, Features, Invocation, NetworkOptions, Slirp, SlirpCommand, StartError, Target,
};

const AS_NOBODY: &str = "SLIRP_PROC_TEST_AS_NOBODY";

/// Without CAP_SYS_ADMIN, the mount namespace for --enable-sandbox is
/// refused; the error says so and how a rootless caller gets one.
#[test]
fn a_refused_mount_namespace_says_what_to_set() {
    if slirp_proc::netns_util::has_cap(Capability::CAP_SYS_ADMIN) {
        assert!(
            std::env::var_os(AS_NOBODY).is_none(),
            "still privileged as nobody"
        );
        let status = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_refused_mount_namespace_says_what_to_set",
                "--nocapture",
            ])
            .env(AS_NOBODY, "1")
            .status()
            .unwrap();
        assert!(status.success(), "the test as nobody failed: {status}");
        return;
    }
    // The refusal comes before exec: the binary is never run.
    let mut cmd = SlirpCommand::new(
        "/bin/true",
        NetworkOptions::new().with_ipv6(false),
        Features::all(),
        Invocation::new(Target::Path {
            netns: "/proc/self/ns/net".into(),
            userns: None,
        }),
    );
    cmd.ready_timeout = Duration::from_secs(10);
    assert!(cmd.new_mount_ns);
    let err = Slirp::start(&cmd).unwrap_err();
    let StartError::Privilege(p) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(p.cap, Capability::CAP_SYS_ADMIN);
    let text = err.to_string();
    assert!(text.contains("join_userns"), "{text}");
    assert!(std::error::Error::source(&err).is_none());
}
