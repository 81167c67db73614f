//! The man pages and shell completions of `slirpnet`, generated from its
//! clap definitions (the hidden `slirpnet __generate`, which
//! `cargo xtask install` runs): the options and subcommands come from clap,
//! the sections clap has no place for (exit status, environment, files)
//! from here.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Command;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// `slirpnet __generate`: where to write what.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Write a man page (section 1) per command into DIR
    #[arg(long, value_name = "DIR")]
    man: Option<PathBuf>,
    /// Write the bash, zsh and fish completions into DIR (slirpnet.bash,
    /// _slirpnet, slirpnet.fish)
    #[arg(long, value_name = "DIR")]
    completions: Option<PathBuf>,
}

/// Writes what `args` asks for, from the program's clap `cmd`, and prints
/// each file written on stdout.
pub fn generate(args: &GenerateArgs, cmd: Command) -> Result<()> {
    let mut written = Vec::new();
    if let Some(dir) = &args.man {
        written.extend(man_pages(cmd.clone(), dir)?);
    }
    if let Some(dir) = &args.completions {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = cmd.clone();
            let path = clap_complete::generate_to(shell, &mut cmd, "slirpnet", dir).with_context(
                || {
                    format!(
                        "failed to write the {shell} completion into {}",
                        dir.display()
                    )
                },
            )?;
            written.push(path);
        }
    }
    let mut out = std::io::stdout().lock();
    for path in written {
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

/// One page per visible command (`slirpnet.1`, `slirpnet-run.1`,
/// `slirpnet-port-ls.1`, ...), into `dir`.
fn man_pages(cmd: Command, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    let mut todo = vec![cmd];
    while let Some(cmd) = todo.pop() {
        todo.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_owned();
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        // Every page carries the program's version (clap gives it to the
        // top command only).
        render(cmd.version(env!("CARGO_PKG_VERSION")), &name, &mut page)?;
        std::fs::write(&path, page)
            .with_context(|| format!("failed to write {}", path.display()))?;
        pages.push(path);
    }
    pages.sort();
    Ok(pages)
}

/// The page of `cmd` (`name` is its page name): clap's sections, then ours.
fn render(cmd: Command, name: &str, out: &mut dyn Write) -> std::io::Result<()> {
    let has_subcommands = cmd.get_subcommands().any(|s| !s.is_hide_set());
    let has_options = cmd.get_arguments().any(|a| !a.is_hide_set());
    let source = format!("slirpnet {}", cmd.get_version().unwrap_or_default());
    let man = Man::new(cmd).source(source).manual("slirpnet manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if has_options {
        man.render_options_section(out)?;
    }
    if has_subcommands {
        man.render_subcommands_section(out)?;
    }
    let mut roff = Roff::default();
    for section in sections(name) {
        roff.control("SH", [section.title]);
        for block in section.blocks {
            match block {
                Block::Para(text) => {
                    roff.control("PP", []);
                    roff.text([roman(text)]);
                }
                Block::Item(term, text) => {
                    roff.control("TP", []);
                    roff.text([bold(term)]);
                    roff.text([roman(text)]);
                }
            }
        }
    }
    roff.to_writer(out)?;
    man.render_version_section(out)
}

/// A section clap has no place for.
struct Section {
    title: &'static str,
    blocks: Vec<Block>,
}

/// A paragraph, or a term and its description.
enum Block {
    Para(&'static str),
    Item(&'static str, &'static str),
}

const STATUS_OWN: Block = Block::Item(
    "125",
    "slirpnet's own failure: a bad -o or -p, the setup failed, a port change was refused, no such session.",
);

const ENV_LOG: Block = Block::Item(
    "RUST_LOG",
    "What slirpnet logs on stderr (default warn), e.g. RUST_LOG=debug.",
);

const ENV_RUNTIME: Block = Block::Item(
    "XDG_RUNTIME_DIR",
    "Where a session's control socket lives: $XDG_RUNTIME_DIR/slirpnet/PID.sock (/run/slirpnet/PID.sock for root).",
);

const FILE_FORWARDER: Block = Block::Item(
    "rootlessport",
    "The port forwarder of port_handler=rootlesskit (the default): the rootlessport next to slirpnet, else ../libexec/slirpnet/rootlessport from slirpnet's directory (where cargo xtask install puts it), else the first on PATH. podman's helper directories are never searched; name another forwarder with --rootlessport PATH. --json reports the one that runs (forwarder.path).",
);

/// The sections of page `name` beyond clap's.
fn sections(name: &str) -> Vec<Section> {
    let status = |first: Vec<Block>| Section {
        title: "EXIT STATUS",
        blocks: first.into_iter().chain([STATUS_OWN]).collect(),
    };
    let ok = || Block::Item("0", "Success.");
    let see_also = |pages: &'static str| Section {
        title: "SEE ALSO",
        blocks: vec![Block::Para(pages)],
    };
    match name {
        "slirpnet" => vec![
            Section {
                title: "EXIT STATUS",
                blocks: vec![
                    ok(),
                    STATUS_OWN,
                    Block::Para("slirpnet run exits with its command's status (128+N when signal N killed it)."),
                ],
            },
            Section {
                title: "ENVIRONMENT",
                blocks: vec![
                    ENV_LOG,
                    ENV_RUNTIME,
                    Block::Item("PATH", "Where slirp4netns is found (unless --slirp4netns names it), and rootlessport as the last resort."),
                ],
            },
            Section {
                title: "FILES",
                blocks: vec![FILE_FORWARDER],
            },
            see_also("slirpnet-run(1), slirpnet-attach(1), slirpnet-stats(1), slirpnet-ps(1), slirpnet-port(1), rootlessport(1), slirp4netns(1), unshare(1)"),
        ],
        "slirpnet-run" => vec![
            Section {
                title: "NAMESPACES",
                blocks: vec![
                    Block::Para("As root slirpnet run makes a new network and mount namespace; as any other user also a user namespace mapping the user to root (as unshare -rn does). The command sees tap0 at 10.0.2.100, lo up, a default route via 10.0.2.2, and an /etc/resolv.conf naming 10.0.2.3, bound over the file in its own mount namespace only (--no-resolv-conf leaves it)."),
                    Block::Para("SIGINT and SIGTERM sent to slirpnet reach the command; if slirpnet is killed, even with SIGKILL, the command is killed too. --json prints the setup on stderr."),
                ],
            },
            status(vec![
                Block::Item("N", "The command's exit status, or 128+N when signal N killed it."),
            ]),
            Section {
                title: "ENVIRONMENT",
                blocks: vec![ENV_LOG, ENV_RUNTIME],
            },
            Section {
                title: "FILES",
                blocks: vec![FILE_FORWARDER],
            },
            see_also("slirpnet(1), slirpnet-port(1), slirpnet-ps(1), rootlessport(1), slirp4netns(1)"),
        ],
        "slirpnet-attach" => vec![
            status(vec![Block::Item(
                "0",
                "Ended by SIGINT or SIGTERM, everything torn down. When slirp4netns dies, slirpnet exits 125 with its log.",
            )]),
            Section {
                title: "ENVIRONMENT",
                blocks: vec![ENV_LOG, ENV_RUNTIME],
            },
            Section {
                title: "FILES",
                blocks: vec![FILE_FORWARDER],
            },
            see_also("slirpnet(1), slirpnet-port(1), slirpnet-ps(1), rootlessport(1), slirp4netns(1)"),
        ],
        "slirpnet-ps" | "slirpnet-port" | "slirpnet-port-ls" | "slirpnet-port-add" | "slirpnet-port-rm" => vec![
            Section {
                title: "SESSIONS",
                blocks: vec![Block::Para("Every running slirpnet run and slirpnet attach serves a control socket, $XDG_RUNTIME_DIR/slirpnet/PID.sock (/run/slirpnet/PID.sock for root), mode 0600, for its own user only, removed when it ends; a socket left by a killed session is removed by the next slirpnet ps. Ports added are forwarded all or none; ports removed stop accepting at once, connections already open carry on.")],
            },
            status(vec![ok()]),
            Section {
                title: "ENVIRONMENT",
                blocks: vec![ENV_RUNTIME],
            },
            see_also("slirpnet(1), slirpnet-run(1), slirpnet-attach(1), slirpnet-ps(1), slirpnet-port(1)"),
        ],
        _ => vec![status(vec![ok()]), see_also("slirpnet(1)")],
    }
}
