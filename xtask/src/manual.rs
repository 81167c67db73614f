//! rootlessport's man page. The program has no command line (podman
//! starts it with argv `["rootlessport"]` and its configuration on stdin),
//! so its page is made with clap_mangen from a clap `Command` that only
//! documents it, plus the sections that say the contract.

use std::io::Write;

use clap::Command;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// A section clap has no place for.
struct Section {
    title: &'static str,
    blocks: &'static [Block],
}

/// A paragraph, a term and its description, or an example set as is.
enum Block {
    Para(&'static str),
    Item(&'static str, &'static str),
    Example(&'static str),
}

/// Writes `rootlessport.1` for rootlessport `version`.
pub fn rootlessport_page(version: &str, out: &mut dyn Write) -> std::io::Result<()> {
    let cmd = Command::new("rootlessport")
        .about("forward host ports into a network namespace, as podman's helper of that name")
        .long_about(
            "rootlessport is a drop-in replacement for podman's rootlessport helper. podman \
             starts it for rootless containers with port_handler=rootlesskit and for rootless \
             bridge networks; slirpnet starts it the same way. It binds every host port of its \
             configuration, says it is ready, and forwards TCP connections and UDP flows to the \
             child IP inside the network namespace until the exit pipe closes.\n\n\
             One process and one event loop: the sockets inside the namespace come from a thread \
             that joined it, TCP moves with splice(2), UDP in batches.",
        )
        .override_usage("rootlessport < CONFIG.json 3< EXIT_PIPE 4> READY_PIPE")
        .disable_help_flag(true)
        .disable_version_flag(true);
    let man = Man::new(cmd)
        .source(format!("rootlessport {version}"))
        .manual("slirpnet manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    let mut roff = Roff::default();
    for section in SECTIONS {
        roff.control("SH", [section.title]);
        for block in section.blocks {
            match block {
                Block::Para(text) => {
                    roff.control("PP", []);
                    roff.text([roman(*text)]);
                }
                Block::Item(term, text) => {
                    roff.control("TP", []);
                    roff.text([bold(*term)]);
                    roff.text([roman(*text)]);
                }
                Block::Example(text) => {
                    roff.control("PP", []);
                    roff.control("EX", []);
                    for line in text.lines() {
                        roff.text([roman(line)]);
                    }
                    roff.control("EE", []);
                }
            }
        }
    }
    roff.control("SH", ["VERSION"]);
    roff.text([roman(format!("v{version}"))]);
    roff.to_writer(out)
}

const SECTIONS: &[Section] = &[
    Section {
        title: "ARGUMENTS",
        blocks: &[Block::Para(
            "None: any argument is refused (one line on stdout, exit status 1). Everything comes \
             on stdin.",
        )],
    },
    Section {
        title: "STANDARD INPUT",
        blocks: &[
            Block::Para(
                "One JSON document, read to end of file before anything else. Keys are Go field \
                 names, matched regardless of case; unknown keys are ignored.",
            ),
            Block::Example(
                "{\"Mappings\":[{\"host_ip\":\"\",\"container_port\":80,\"host_port\":8080,\n  \
                 \"range\":1,\"protocol\":\"tcp,udp\"}],\n \
                 \"NetNSPath\":\"/run/user/1000/netns/netns-1\",\"ExitFD\":3,\"ReadyFD\":4,\n \
                 \"TmpDir\":\"/run/user/1000/libpod/tmp\",\"ChildIP\":\"10.0.2.100\",\n \
                 \"ContainerID\":\"<64 hex digits>\",\"RootlessCNI\":false}",
            ),
            Block::Item(
                "Mappings",
                "The ports: host_ip (empty: every address, IPv4 and IPv6 on one dual-stack \
                 socket), host_port, container_port, range (how many consecutive ports; 0 \
                 forwards nothing) and protocol, a comma list of tcp and udp (sctp is refused).",
            ),
            Block::Item(
                "NetNSPath",
                "The network namespace to forward into (required).",
            ),
            Block::Item(
                "ExitFD, ReadyFD",
                "The numbers of the exit and ready pipes (required; podman passes 3 and 4).",
            ),
            Block::Item(
                "ChildIP",
                "The address connections are made to inside the namespace. A loopback address \
                 is refused: it would expose services bound to 127.0.0.1 (CVE-2021-20199).",
            ),
            Block::Item(
                "TmpDir, ContainerID, RootlessCNI",
                "With RootlessCNI true, the reload socket TmpDir/rp/ContainerID (below).",
            ),
        ],
    },
    Section {
        title: "FILE DESCRIPTORS",
        blocks: &[
            Block::Item("0 (stdin)", "The configuration above."),
            Block::Item(
                "1 (stdout)",
                "Before ready, on any failure: one human-readable line (podman shows it as \
                 rootlessport LINE), then exit status 1. Pointed at /dev/null once ready.",
            ),
            Block::Item(
                "2 (stderr)",
                "The log (ROOTLESSPORT_LOG). Pointed at /dev/null once ready.",
            ),
            Block::Item(
                "3 (ExitFD)",
                "The exit pipe's read end. When it reaches end of file (the starter closed its \
                 end or died), rootlessport stops forwarding, removes what it made and exits 0.",
            ),
            Block::Item(
                "4 (ReadyFD)",
                "The ready pipe's write end. Once every host port is bound, rootlessport writes \
                 the byte 1 and closes it.",
            ),
        ],
    },
    Section {
        title: "RELOAD SOCKET",
        blocks: &[Block::Para(
            "With RootlessCNI true, rootlessport serves a SOCK_SEQPACKET socket at \
             TmpDir/rp/ContainerID (directory mode 0700). A client sends a JSON string with a new \
             child IP (podman does after podman network connect or disconnect); every forward \
             is retargeted to it and the answer is OK, or an error text.",
        )],
    },
    Section {
        title: "ENVIRONMENT",
        blocks: &[
            Block::Item(
                "ROOTLESSPORT_LOG",
                "What is logged on stderr until ready (a tracing filter, default info), e.g. \
                 ROOTLESSPORT_LOG=debug.",
            ),
            Block::Item(
                "ROOTLESSPORT_KEEP_SOURCE_IP",
                "1: the service in the namespace sees each client's own address and port, TCP \
                 and UDP (see CLIENT ADDRESSES). 0, empty or unset: every client shows as the \
                 namespace's own address, as with podman's Go helper. Any other value: off, with \
                 a warning.",
            ),
            Block::Item(
                "ROOTLESSPORT_CONTROL_SOCKET",
                "A path: rootlessport serves a control socket there (SOCK_SEQPACKET, mode 0600, \
                 its own user only) that adds, removes and lists ports while it forwards \
                 (slirpnet port add, rm, ls). podman never sets it.",
            ),
            Block::Item(
                "ROOTLESSPORT_SANDBOX",
                "0 turns the confinement described under CONFINEMENT off; it is on by \
                 default.",
            ),
        ],
    },
    Section {
        title: "CLIENT ADDRESSES",
        blocks: &[
            Block::Para(
                "With ROOTLESSPORT_KEEP_SOURCE_IP=1 the socket inside the namespace is bound to \
                 the client's own address and port (IP_TRANSPARENT), and the namespace routes the \
                 replies to current clients back to rootlessport: it adds policy rules and \
                 per-client local routes in a table of its own, over netlink, marked protocol 82, \
                 and removes them when it exits (a forwarder killed with SIGKILL leaves them to \
                 the next one for that namespace). This needs CAP_NET_ADMIN over the namespace; \
                 where the namespace refuses, rootlessport forwards as without it, with one \
                 warning.",
            ),
            Block::Para(
                "Loopback clients (127.0.0.0/8, ::1) always show as the namespace's own address, \
                 so that nothing inside mistakes them for local (CVE-2021-20199); so do clients \
                 of the other address family than the child IP.",
            ),
        ],
    },
    Section {
        title: "CONFINEMENT",
        blocks: &[Block::Para(
            "Once it serves, it confines itself: no_new_privs, unneeded capabilities dropped, \
             a seccomp allow-list, Landlock where the kernel has it. ROOTLESSPORT_SANDBOX=0 turns \
             this off.",
        )],
    },
    Section {
        title: "SIGNALS",
        blocks: &[Block::Para(
            "SIGTERM and SIGINT stop it as the end of the exit pipe does: cleanly, exit status 0.",
        )],
    },
    Section {
        title: "EXIT STATUS",
        blocks: &[
            Block::Item(
                "0",
                "Stopped by the exit pipe, SIGTERM or SIGINT, after removing what it made.",
            ),
            Block::Item(
                "1",
                "A failure: before ready with one line on stdout (bad configuration, a host \
                 port that cannot be bound, a namespace that cannot be opened), or while \
                 serving.",
            ),
        ],
    },
    Section {
        title: "FILES",
        blocks: &[Block::Para(
            "cargo xtask install puts it at PREFIX/libexec/slirpnet/rootlessport, where slirpnet \
             finds it, and never over podman's own helper. podman looks for rootlessport in its \
             helper_binaries_dir (containers.conf(5)); to use this one, put \
             PREFIX/libexec/slirpnet before podman's directories there.",
        )],
    },
    Section {
        title: "SEE ALSO",
        blocks: &[Block::Para(
            "slirpnet(1), slirpnet-run(1), podman-run(1), containers.conf(5), slirp4netns(1)",
        )],
    },
];
