//! hbtgtadm: tgtadm's command line for hablock's iSCSI target.
//!
//! Accepts tgtadm's long and short flags (`--mode target --op new --tid 1 --targetname ...`,
//! `-m target -o new -t 1 -T ...`, `--tid=1`, `-t1`), sends the command to this node's
//! hablockd and prints what tgtadm would print, with tgtadm's exit code. The node is found
//! like every hablock tool: `HABLOCK_CONFIG`/`HABLOCK_NODE`, else /etc/hablock/hablock.toml
//! and the hostname. `-C/--control-port` and tgtd-only flags are accepted and ignored.
//!
//! `hbtgtadm --import FILE [--dry-run]` reads a tgt-admin `targets.conf` and runs the tgtadm
//! commands tgt-admin would (printing them instead with `--dry-run`).

use hablock::control::{client, exit, Request};
use hablock::iscsi::target::{import_targets_conf, TgtReply, TgtRequest};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
Usage: hbtgtadm [OPTION]   (tgtadm's options; see tgtadm --help)
--lld iscsi --mode target --op new --tid <id> --targetname <name>
--lld iscsi --mode target --op delete [--force] --tid <id>
--lld iscsi --mode target --op show [--tid <id>]
--lld iscsi --mode target --op update --tid <id> --name <param> --value <value>
--lld iscsi --mode target --op bind|unbind --tid <id> --initiator-address <address>|--initiator-name <name>
--lld iscsi --mode logicalunit --op new --tid <id> --lun <lun> --backing-store <path|resource>
      [--bstype rdwr|hablock] [--bsoflags sync:direct] [--params k=v,...]
--lld iscsi --mode logicalunit --op update --tid <id> --lun <lun> --params k=v,...
--lld iscsi --mode logicalunit --op delete --tid <id> --lun <lun>
--lld iscsi --mode account --op new --user <name> --password <pass>
--lld iscsi --mode account --op delete --user <name>
--lld iscsi --mode account --op bind|unbind [--tid <id>] --user <name> [--outgoing]
      (without --tid: the discovery session's account)
--lld iscsi --mode account --op show
--lld iscsi --mode conn --op show --tid <id> [--sid <sid>]
--lld iscsi --mode conn --op delete --tid <id> --sid <sid> --cid <cid>
--lld iscsi --mode session --op delete --tid <id> --sid <sid>
--lld iscsi --mode portal --op show
--mode sys --op show
--import <targets.conf> [--dry-run]   run tgt-admin's configuration file
The node: HABLOCK_CONFIG and HABLOCK_NODE, else /etc/hablock/hablock.toml and the hostname.
";

/// What the command line asks for.
#[derive(Debug, Default)]
struct Cli {
    req: TgtRequest,
    import: Option<String>,
    dry_run: bool,
    help: bool,
}

/// A tgtadm-style usage error: message and exit code (22, EINVAL, as tgtadm).
type UsageErr = (String, i32);

fn bad_value(flag: char, v: &str) -> UsageErr {
    (
        format!("-{flag} argument value '{v}' invalid\nTry `tgtadm --help' for more information."),
        22,
    )
}

fn parse(args: &[String]) -> Result<Cli, UsageErr> {
    let mut cli = Cli::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        // Normalise to (short letter, inline value).
        let (key, inline): (String, Option<String>) = if let Some(long) = a.strip_prefix("--") {
            match long.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (long.to_string(), None),
            }
        } else if let Some(short) = a.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let c = chars.next().unwrap_or('?');
            let rest: String = chars.collect();
            (c.to_string(), (!rest.is_empty()).then_some(rest))
        } else {
            return Err((
                format!("tgtadm: unrecognized option '{a}'\nTry `tgtadm --help' for more information."),
                22,
            ));
        };
        let name = match key.as_str() {
            "L" | "lld" => "lld",
            "m" | "mode" => "mode",
            "o" | "op" => "op",
            "t" | "tid" => "tid",
            "T" | "targetname" => "targetname",
            "l" | "lun" => "lun",
            "b" | "backing-store" => "backing-store",
            "E" | "bstype" => "bstype",
            "S" | "bsopts" => "bsopts",
            "f" | "bsoflags" => "bsoflags",
            "Y" | "device-type" => "device-type",
            // The seed's notes spell it -i; tgtadm's letter is -I. Both work.
            "I" | "i" | "initiator-address" => "initiator-address",
            "Q" | "initiator-name" => "initiator-name",
            "u" | "user" => "user",
            "p" | "password" => "password",
            "n" | "name" => "name",
            "v" | "value" => "value",
            "P" | "params" => "params",
            "s" | "sid" => "sid",
            "c" | "cid" => "cid",
            "C" | "control-port" | "y" | "blocksize" | "H" | "host" | "B" | "bus" => "ignored",
            "O" | "outgoing" => {
                cli.req.outgoing = true;
                continue;
            }
            "F" | "force" => {
                cli.req.force = true;
                continue;
            }
            "h" | "help" => {
                cli.help = true;
                continue;
            }
            "d" | "debug" | "V" | "version" => continue,
            "import" => "import",
            "dry-run" => {
                cli.dry_run = true;
                continue;
            }
            _ => {
                return Err((
                    format!("tgtadm: unrecognized option '{a}'\nTry `tgtadm --help' for more information."),
                    22,
                ))
            }
        };
        let value = match inline {
            Some(v) => v,
            None if i < args.len() => {
                i += 1;
                args[i - 1].clone()
            }
            None => {
                return Err((
                    format!("tgtadm: option '{a}' requires an argument\nTry `tgtadm --help' for more information."),
                    22,
                ))
            }
        };
        let r = &mut cli.req;
        let num = |c: char| value.parse::<u64>().map_err(|_| bad_value(c, &value));
        match name {
            "lld" => r.lld = Some(value),
            "mode" => r.mode = Some(value),
            "op" => r.op = Some(value),
            "tid" => r.tid = Some(u32::try_from(num('t')?).map_err(|_| bad_value('t', &value))?),
            "targetname" => r.targetname = Some(value),
            "lun" => r.lun = Some(num('l')?),
            "backing-store" => r.backing_store = Some(value),
            "bstype" => r.bstype = Some(value),
            "bsopts" => r.bsopts = Some(value),
            "bsoflags" => r.bsoflags = Some(value),
            "device-type" => r.device_type = Some(value),
            "initiator-address" => r.initiator_address = Some(value),
            "initiator-name" => r.initiator_name = Some(value),
            "user" => r.user = Some(value),
            "password" => r.password = Some(value),
            "name" => r.name = Some(value),
            "value" => r.value = Some(value),
            "params" => r.params = Some(value),
            "sid" => r.sid = Some(num('s')?),
            "cid" => r.cid = Some(num('c')?),
            "import" => cli.import = Some(value),
            _ => {}
        }
    }
    Ok(cli)
}

/// The tgtadm command line that makes `r` (for `--dry-run`).
fn command_line(r: &TgtRequest) -> String {
    let mut s = String::from("tgtadm");
    let mut put = |flag: &str, v: &Option<String>| {
        if let Some(v) = v {
            if v.contains(char::is_whitespace) || v.is_empty() {
                s.push_str(&format!(" --{flag} '{v}'"));
            } else {
                s.push_str(&format!(" --{flag} {v}"));
            }
        }
    };
    put("lld", &r.lld);
    put("mode", &r.mode);
    put("op", &r.op);
    put("tid", &r.tid.map(|t| t.to_string()));
    put("targetname", &r.targetname);
    put("lun", &r.lun.map(|t| t.to_string()));
    put("backing-store", &r.backing_store);
    put("bstype", &r.bstype);
    put("bsoflags", &r.bsoflags);
    put("bsopts", &r.bsopts);
    put("device-type", &r.device_type);
    put("params", &r.params);
    put("name", &r.name);
    put("value", &r.value);
    put("initiator-address", &r.initiator_address);
    put("initiator-name", &r.initiator_name);
    put("user", &r.user);
    put("password", &r.password);
    if r.outgoing {
        s.push_str(" --outgoing");
    }
    s
}

fn send(socket: &std::path::Path, req: &TgtRequest) -> TgtReply {
    let resp = client::call(
        socket,
        &Request {
            cmd: "tgtadm".into(),
            resource: "all".into(),
            force: false,
            cib_ops: None,
            tgt: Some(serde_json::to_value(req).expect("request serializes")),
        },
        Duration::from_secs(60),
    );
    match resp.tgt {
        Some(reply) if resp.code == exit::OK => *reply,
        _ => TgtReply {
            code: if resp.code == exit::OK { exit::FAILED } else { resp.code },
            stdout: String::new(),
            stderr: format!(
                "tgtadm: can't send the request to hablockd: {}\n",
                if resp.error.is_empty() {
                    "the daemon does not know tgtadm requests (too old?)"
                } else {
                    &resp.error
                }
            ),
        },
    }
}

fn emit(reply: &TgtReply) {
    let _ = std::io::stdout().write_all(reply.stdout.as_bytes());
    let _ = std::io::stderr().write_all(reply.stderr.as_bytes());
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = match parse(&args) {
        Ok(c) => c,
        Err((msg, code)) => {
            eprintln!("{msg}");
            return ExitCode::from(code as u8);
        }
    };
    if cli.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if let (Some(file), true) = (&cli.import, cli.dry_run) {
        // Nothing to ask the daemon: print what would run, tids from 1.
        return match std::fs::read_to_string(file)
            .map_err(|e| format!("{file}: {e}"))
            .and_then(|t| import_targets_conf(&t, 1).map_err(|e| format!("{file}: {e}")))
        {
            Ok(steps) => {
                for s in steps {
                    println!("{}", command_line(&s.req));
                }
                ExitCode::SUCCESS
            }
            Err(e) => hablock_tools::fail("hbtgtadm", exit::FAILED, e),
        };
    }
    let (id, cfg) = match hablock_tools::load("hbtgtadm", None, None) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let socket = cfg.control_socket(&id.node);
    if let Some(file) = &cli.import {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => return hablock_tools::fail("hbtgtadm", exit::FAILED, format!("{file}: {e}")),
        };
        // New targets take tids after the highest one in use.
        let show = send(
            &socket,
            &TgtRequest {
                lld: Some("iscsi".into()),
                mode: Some("target".into()),
                op: Some("show".into()),
                ..TgtRequest::default()
            },
        );
        if show.code != 0 {
            emit(&show);
            return ExitCode::from(show.code.clamp(1, 255) as u8);
        }
        let max_tid = show
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("Target ")?.split(':').next()?.parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        let steps = match import_targets_conf(&text, max_tid + 1) {
            Ok(s) => s,
            Err(e) => return hablock_tools::fail("hbtgtadm", exit::FAILED, format!("{file}: {e}")),
        };
        for s in steps {
            let reply = send(&socket, &s.req);
            if reply.code != 0 && !(s.tolerate_exists && reply.stderr.contains("already exists")) {
                eprint!("{}\n{}", command_line(&s.req), reply.stderr);
                return ExitCode::from(reply.code.clamp(1, 255) as u8);
            }
        }
        return ExitCode::SUCCESS;
    }
    let reply = send(&socket, &cli.req);
    emit(&reply);
    ExitCode::from(reply.code.clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<Cli, UsageErr> {
        parse(&line.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn long_short_and_inline_forms_agree() {
        let a = p("--lld iscsi --mode target --op new --tid 1 --targetname iqn.2026-11.a.b:c").unwrap();
        let b = p("-L iscsi -m target -o new -t 1 -T iqn.2026-11.a.b:c").unwrap();
        let c = p("--lld=iscsi --mode=target --op=new --tid=1 --targetname=iqn.2026-11.a.b:c").unwrap();
        let d = p("-Liscsi -mtarget -onew -t1 -Tiqn.2026-11.a.b:c -C 3").unwrap();
        assert_eq!(a.req, b.req);
        assert_eq!(a.req, c.req);
        assert_eq!(a.req, d.req);
        assert_eq!(a.req.tid, Some(1));
        let e = p("-m account -o bind -t 2 -u bob -O -F -i 10.0.0.0/8 -Q iqn.x:y -P readonly=1 -s 3 -c 0").unwrap();
        assert!(e.req.outgoing && e.req.force);
        assert_eq!(e.req.initiator_address.as_deref(), Some("10.0.0.0/8"));
        assert_eq!((e.req.sid, e.req.cid), (Some(3), Some(0)));
        assert_eq!(e.req.params.as_deref(), Some("readonly=1"));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let (msg, code) = p("--mode target --op show --tid -1").unwrap_err();
        assert_eq!(code, 22);
        assert!(msg.starts_with("-t argument value '-1' invalid"), "{msg}");
        assert!(p("--mode target --op show --tid").is_err());
        assert_eq!(
            p("--mode target --op show --tid").unwrap_err().0,
            "tgtadm: option '--tid' requires an argument\nTry `tgtadm --help' for more information."
        );
        assert_eq!(
            p("--frobnicate 1").unwrap_err().0,
            "tgtadm: unrecognized option '--frobnicate'\nTry `tgtadm --help' for more information."
        );
        assert_eq!(
            p("stray").unwrap_err().0.lines().next().unwrap(),
            "tgtadm: unrecognized option 'stray'"
        );
        assert!(p("-l x").unwrap_err().0.starts_with("-l argument value 'x' invalid"));
    }

    #[test]
    fn dry_run_lines_reparse_to_the_same_request() {
        let r = p(
            "--lld iscsi --mode logicalunit --op new --tid 1 --lun 2 --backing-store r0 --bstype hablock --outgoing",
        )
        .unwrap()
        .req;
        let line = command_line(&r);
        let back = p(line.strip_prefix("tgtadm ").unwrap()).unwrap().req;
        assert_eq!(back, r);
    }
}
