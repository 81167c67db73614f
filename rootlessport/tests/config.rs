//! rootlessport's configuration as podman sends it: decoding as Go does,
//! validation, and the child IP. No privilege needed.

use rootlessport::{parse_child_ip, Config, ConfigError};

const NETNS: &str = "/run/netns/x";

fn doc(extra: &str) -> String {
    format!(
        r#"{{"Mappings":[{{"host_ip":"","container_port":80,"host_port":8080,"range":2,"protocol":"tcp,udp"}}],"NetNSPath":"{NETNS}","ExitFD":3,"ReadyFD":4,"ChildIP":"10.0.2.100"{extra}}}"#
    )
}

#[test]
fn a_podman_document_validates_into_forwards() {
    let valid = Config::from_json(&doc("")).unwrap().validate().unwrap();
    assert_eq!(valid.forwards.len(), 4);
    assert_eq!(valid.netns_path.to_str(), Some(NETNS));
    assert_eq!((valid.exit_fd, valid.ready_fd), (3, 4));
    assert!(valid.reload.is_none());
    let with_reload = doc(r#","TmpDir":"/tmp/p","ContainerID":"abc","RootlessCNI":true"#);
    let valid = Config::from_json(&with_reload).unwrap().validate().unwrap();
    let reload = valid.reload.unwrap();
    assert_eq!(
        (reload.tmp_dir.to_str(), reload.container_id.as_str()),
        (Some("/tmp/p"), "abc")
    );
}

#[test]
fn go_decoding_rules() {
    // Case-insensitive keys; the last in the document wins; null is a no-op.
    let c = Config::from_json(&doc(r#","exitfd":7,"EXITFD":5,"readyFD":null"#)).unwrap();
    assert_eq!((c.exit_fd, c.ready_fd), (5, 4));
    // A struct given as an array, at the top or inside.
    for bad in [
        r#"[[],"x"]"#,
        r#"{"Mappings":[["",80,8080,1,"tcp"]]}"#,
        r#"{"Mappings":[[]]}"#,
        r#"{"Mappings":{"host_port":1}}"#,
    ] {
        let err = Config::from_json(bad).unwrap_err();
        assert!(matches!(err, ConfigError::Decode(_)), "{bad}: {err}");
    }
    // Wrong types and out-of-range numbers.
    for bad in [
        r#"{"ExitFD":"3"}"#,
        r#"{"ExitFD":3.5}"#,
        r#"{"ExitFD":1e30}"#,
        r#"{"RootlessCNI":"true"}"#,
        r#"{"Mappings":[{"host_port":70000}]}"#,
        r#"{"Mappings":[{"range":-1}]}"#,
    ] {
        assert!(Config::from_json(bad).is_err(), "{bad}");
    }
}

#[test]
fn each_invalid_field_is_named() {
    let check = |extra: &str, without: &str, want: &str| {
        let text = doc(extra).replace(without, "");
        let err = Config::from_json(&text)
            .and_then(Config::validate)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text}: {err:?} lacks {want:?}");
    };
    let cases: &[(&str, &str, &str)] = &[
        (
            "",
            &format!(r#""NetNSPath":"{NETNS}","#),
            "missing NetNSPath",
        ),
        ("", r#""ExitFD":3,"#, "missing ExitFD"),
        ("", r#""ReadyFD":4,"#, "missing ReadyFD"),
        (r#","ReadyFD":3"#, "", "ExitFD and ReadyFD are both 3"),
        (r#","ExitFD":2"#, "", "ExitFD 2 is not usable"),
        (r#","ReadyFD":-4"#, "", "ReadyFD -4 is not usable"),
        (r#","ChildIP":"""#, "", "missing ChildIP"),
        (r#","ChildIP":"127.0.0.1""#, "", "CVE-2021-20199"),
        (r#","ChildIP":"::ffff:127.0.0.9""#, "", "CVE-2021-20199"),
        (r#","ChildIP":"0.0.0.0""#, "", "invalid ChildIP"),
        (r#","ChildIP":"not-an-ip""#, "", "invalid ChildIP"),
        (
            r#","RootlessCNI":true"#,
            "",
            "RootlessCNI needs TmpDir and ContainerID",
        ),
        (
            r#","RootlessCNI":true,"TmpDir":"/t","ContainerID":"../x""#,
            "",
            "invalid ContainerID",
        ),
        (
            r#","Mappings":[{"container_port":80,"host_port":8080,"range":1,"protocol":"sctp"}]"#,
            "",
            "sctp is not supported",
        ),
        (
            r#","Mappings":[{"container_port":0,"host_port":8080,"range":1}]"#,
            "",
            "container port is 0",
        ),
    ];
    for (extra, without, want) in cases {
        check(extra, without, want);
    }
}

#[test]
fn child_ips() {
    for (text, want) in [
        ("10.0.2.100", Some("10.0.2.100")),
        ("fd00::100", Some("fd00::100")),
        ("::ffff:10.88.0.5", Some("10.88.0.5")),
        ("127.0.0.1", None),
        ("::1", None),
        ("224.0.0.1", None),
        ("::", None),
        ("10.0.2.100/24", None),
        ("", None),
    ] {
        let got = parse_child_ip(text).ok().map(|ip| ip.to_string());
        assert_eq!(got.as_deref(), want, "{text}");
    }
}
