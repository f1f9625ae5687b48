//! hbcrm: crm shell and crm_mon for hablock's cluster layer. The logic is in
//! `hablock_tools::crm` (pure: CIB in, operations or text out); this file talks to the local
//! hablockd (`cluster-status`, `cib-show`, `cib-change`) and maps the command line.

use clap::{Args as ClapArgs, Parser, Subcommand};
use hablock::cluster::cib::config::Attrs;
use hablock::cluster::cib::status::FenceEvent;
use hablock::cluster::cib::{crmsh, validate, Cib, CibOp, Configuration, Status};
use hablock::control::{client, exit, Request, Response};
use hablock_tools::crm::{self, configure, resource, status};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// crm shell and crm_mon for hablock: the cluster configuration, resources, nodes and status.
#[derive(Parser)]
#[command(version, about = "crm shell and crm_mon for hablock: the cluster configuration, resources, nodes and status.", after_help = EXIT_HELP)]
struct Args {
    /// The cluster file (default: $HABLOCK_CONFIG, then /etc/hablock/hablock.toml).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// This node's name in the file (default: $HABLOCK_NODE, then the hostname): the hablockd
    /// asked. Give it before the command.
    #[arg(long, short = 'n')]
    node: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

const EXIT_HELP: &str = "Exit codes: 0 ok, 1 failed (or no [cluster] section for this node), \
11 change refused (no quorum, or invalid), 20 hablockd not reachable, 105 attribute not found.";

#[derive(Subcommand)]
enum Cmd {
    /// The cluster once, as `crm_mon -1`: summary, nodes, resources, failed actions.
    Status {
        /// Machine-readable output (the membership document plus resources, failed actions,
        /// fail counts).
        #[arg(long)]
        json: bool,
        /// Also the fail counts per node (crm_mon's Migration Summary).
        #[arg(long, short = 'f')]
        failcounts: bool,
        /// Also every fencing operation kept in the CIB (crm_mon's Fencing History); failed
        /// ones since the target was last fenced are always shown.
        #[arg(long)]
        fence_history: bool,
        /// Accepted for crm_mon's `-1` (hbcrm always prints once).
        #[arg(short = '1', hide = true)]
        _once: bool,
    },
    /// Node state in the CIB, as `crm node`.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Resources, as `crm resource`.
    Resource {
        #[command(subcommand)]
        cmd: ResourceCmd,
    },
    /// The cluster configuration (the CIB), as `crm configure`.
    Configure {
        #[command(subcommand)]
        cmd: ConfigureCmd,
    },
    /// Read, set or delete a node attribute (or a cluster option), as `crm_attribute`.
    Attribute(AttributeArgs),
}

#[derive(ClapArgs)]
struct Force {
    /// Without quorum: change this node's copy only (a partition with quorum overrides it).
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Put NODE (default: this node) in standby: it may run no resources.
    Standby {
        #[arg(value_name = "NODE")]
        uname: Option<String>,
        #[command(flatten)]
        force: Force,
    },
    /// Take NODE (default: this node) out of standby.
    Online {
        #[arg(value_name = "NODE")]
        uname: Option<String>,
        #[command(flatten)]
        force: Force,
    },
    /// Put NODE (default: this node) in maintenance: its resources are left alone.
    Maintenance {
        #[arg(value_name = "NODE")]
        uname: Option<String>,
        #[command(flatten)]
        force: Force,
    },
    /// Take NODE (default: this node) out of maintenance.
    Ready {
        #[arg(value_name = "NODE")]
        uname: Option<String>,
        #[command(flatten)]
        force: Force,
    },
    /// Tell the cluster that NODE is down and runs nothing (crmsh's `node clearstate`,
    /// `stonith_admin --confirm`), for a node powered off by hand when fencing cannot reach it:
    /// its resources are then recovered elsewhere. If NODE is in fact still running them, they
    /// run twice: be sure. Refused while NODE is a member, unless --force.
    Clearstate {
        #[arg(value_name = "NODE")]
        uname: String,
        #[command(flatten)]
        force: Force,
    },
    /// A permanent node attribute: `attribute NODE set NAME VALUE`, `delete NAME`, `show NAME`.
    Attribute {
        #[arg(value_name = "NODE")]
        uname: String,
        /// set, delete or show.
        #[arg(value_name = "set|delete|show")]
        verb: String,
        name: String,
        value: Option<String>,
    },
}

#[derive(Subcommand)]
enum ResourceCmd {
    /// Let RSC run (`target-role=Started`).
    Start { rsc: String },
    /// Stop RSC (`target-role=Stopped`).
    Stop { rsc: String },
    /// Move RSC to NODE (`location cli-prefer-RSC RSC role=Started inf: NODE`).
    #[command(alias = "migrate")]
    Move {
        rsc: String,
        node: String,
        /// A promotable clone: move where it is promoted (`role=Promoted`).
        #[arg(long)]
        promoted: bool,
    },
    /// Keep RSC off NODE (`location cli-ban-RSC-on-NODE RSC -inf: NODE`); without NODE, off
    /// the node it runs on.
    Ban { rsc: String, node: Option<String> },
    /// Remove what `move` and `ban` added for RSC.
    #[command(alias = "unmove")]
    Clear { rsc: String },
    /// Forget RSC's operation history and fail counts (all resources without RSC).
    Cleanup {
        rsc: Option<String>,
        /// Only on this node.
        #[arg(long, short = 'N')]
        node: Option<String>,
    },
    /// Where RSC (every resource without RSC) runs, and in which role.
    #[command(alias = "show", alias = "locate")]
    Status { rsc: Option<String> },
    /// Let a promotable clone be promoted (`target-role=Promoted`).
    Promote { rsc: String },
    /// Keep a promotable clone unpromoted (`target-role=Unpromoted`).
    Demote { rsc: String },
    /// A meta attribute of RSC: `meta RSC set NAME VALUE`, `delete NAME`, `show NAME`.
    Meta {
        rsc: String,
        #[arg(value_name = "set|delete|show")]
        verb: String,
        name: String,
        value: Option<String>,
    },
    /// A parameter of primitive RSC: `param RSC set NAME VALUE`, `delete NAME`, `show NAME`.
    Param {
        rsc: String,
        #[arg(value_name = "set|delete|show")]
        verb: String,
        name: String,
        value: Option<String>,
    },
    /// Let the cluster manage RSC again (`is-managed=true`).
    Manage { rsc: String },
    /// Leave RSC alone where it is (`is-managed=false`).
    Unmanage { rsc: String },
}

/// One crm statement as words: `hbcrm configure primitive web Dummy op monitor interval=10s`.
#[derive(ClapArgs)]
struct CrmLine {
    #[command(flatten)]
    force: Force,
    /// The rest of the crm statement (quote values with blanks as for a shell).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "WORDS"
    )]
    words: Vec<String>,
}

#[derive(Subcommand)]
enum ConfigureCmd {
    /// Print the configuration (or the objects named) in crm shell syntax.
    Show {
        /// JSON instead: the whole CIB document, or the objects named.
        #[arg(long)]
        json: bool,
        /// Nodes, resources, constraints, `property`, `rsc_defaults`, `op_defaults`.
        ids: Vec<String>,
    },
    /// Add a primitive: `primitive ID AGENT [params ...] [meta ...] [op NAME ...]`.
    Primitive(CrmLine),
    /// Add a group: `group ID RSC... [meta ...]`.
    Group(CrmLine),
    /// Add a clone: `clone ID RSC [meta ...]`.
    Clone(CrmLine),
    /// Add a promotable clone: `ms ID RSC [meta ...]`.
    #[command(alias = "master")]
    Ms(CrmLine),
    /// Add a promotable clone: `promotable ID RSC [meta ...]`.
    Promotable(CrmLine),
    /// Add a location constraint: `location ID RSC SCORE: NODE` or `... rule ...`.
    Location(CrmLine),
    /// Add a colocation: `colocation ID SCORE: RSC[:ROLE] WITH-RSC[:ROLE]`.
    #[command(alias = "collocation")]
    Colocation(CrmLine),
    /// Add an order: `order ID KIND: FIRST[:ACTION] THEN[:ACTION]`.
    Order(CrmLine),
    /// Set cluster options: `property stonith-enabled=false no-quorum-policy=ignore`.
    /// An empty value (`name=`) deletes the option.
    Property(CrmLine),
    /// Set resource defaults: `rsc_defaults resource-stickiness=100`.
    #[command(name = "rsc_defaults")]
    RscDefaults(CrmLine),
    /// Set operation defaults: `op_defaults timeout=60s`.
    #[command(name = "op_defaults")]
    OpDefaults(CrmLine),
    /// Delete resources and constraints. --force: also what uses them, and running ones.
    Delete {
        #[arg(long)]
        force: bool,
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Load crm text from FILE (`-`: stdin): `update` adds and replaces what it names,
    /// `replace` makes the configuration the file's. Applied as one change.
    Load {
        #[arg(value_name = "update|replace")]
        mode: configure::LoadMode,
        #[arg(value_name = "FILE")]
        file: String,
    },
    /// Edit the configuration in $EDITOR (crm text), then load it as `replace`.
    Edit,
    /// Check the configuration; warn about agents not installed on this node.
    Verify,
}

impl ConfigureCmd {
    /// The statement word and the line of an object-adding command.
    fn object(&self) -> Option<(&'static str, &CrmLine)> {
        Some(match self {
            ConfigureCmd::Primitive(l) => ("primitive", l),
            ConfigureCmd::Group(l) => ("group", l),
            ConfigureCmd::Clone(l) => ("clone", l),
            ConfigureCmd::Ms(l) => ("ms", l),
            ConfigureCmd::Promotable(l) => ("promotable", l),
            ConfigureCmd::Location(l) => ("location", l),
            ConfigureCmd::Colocation(l) => ("colocation", l),
            ConfigureCmd::Order(l) => ("order", l),
            ConfigureCmd::Property(l) => ("property", l),
            ConfigureCmd::RscDefaults(l) => ("rsc_defaults", l),
            ConfigureCmd::OpDefaults(l) => ("op_defaults", l),
            _ => return None,
        })
    }
}

/// crm_attribute's flags.
#[derive(ClapArgs)]
struct AttributeArgs {
    /// The node (default: this node).
    #[arg(long, short = 'N')]
    node: Option<String>,
    /// The attribute's name.
    #[arg(long, short = 'n')]
    name: String,
    /// Set it to this value.
    #[arg(long, short = 'v', conflicts_with_all = ["delete", "query"])]
    update: Option<String>,
    /// Delete it.
    #[arg(long, short = 'D', conflicts_with = "query")]
    delete: bool,
    /// Print it (the default without --update or --delete).
    #[arg(long, short = 'G')]
    query: bool,
    /// With --query: only the value.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// reboot: a transient attribute (status section, gone when the node restarts);
    /// forever: a permanent node attribute (configuration).
    #[arg(long, short = 'l', value_name = "reboot|forever")]
    lifetime: Option<String>,
    /// As crm_attribute -t: status (= reboot), nodes (= forever), crm_config (a cluster
    /// option), rsc_defaults, op_defaults. Default: nodes with --node, crm_config without.
    #[arg(long = "type", short = 't', value_name = "SECTION")]
    section: Option<String>,
}

fn fail(code: i32, msg: impl AsRef<str>) -> ExitCode {
    hablock_tools::fail("hbcrm", code, msg)
}

/// The local hablockd.
struct Daemon {
    socket: PathBuf,
}

impl Daemon {
    fn call(&self, cmd: &str, force: bool, ops: Option<&[CibOp]>) -> Response {
        client::call(
            &self.socket,
            &Request {
                cmd: cmd.into(),
                resource: "all".into(),
                force,
                cib_ops: ops.map(|o| serde_json::to_value(o).expect("ops serialise")),
                tgt: None,
            },
            Duration::from_secs(30),
        )
    }

    /// This node's copy of the CIB, or (exit code, message).
    fn fetch_cib(&self) -> Result<Cib, (i32, String)> {
        let resp = self.call("cib-show", false, None);
        if resp.code != exit::OK {
            return Err((resp.code, resp.error));
        }
        let Some(doc) = resp.cluster else {
            return Err((exit::FAILED, "hablockd answered without a CIB".into()));
        };
        serde_json::from_value::<Cib>(doc["cib"].clone())
            .map_err(|e| (exit::FAILED, format!("unreadable CIB from hablockd: {e}")))
    }

    fn cib(&self) -> Result<Cib, ExitCode> {
        self.fetch_cib().map_err(|(code, msg)| fail(code, msg))
    }

    /// Sends `ops` as one change (after checking them against this node's copy, so a bad
    /// change is reported without a round trip). No operations: nothing to do.
    fn change(&self, cib: Option<&Cib>, ops: Vec<CibOp>, force: bool) -> ExitCode {
        if ops.is_empty() {
            println!("nothing to change");
            return ExitCode::SUCCESS;
        }
        let size = serde_json::to_string(&ops).map_or(0, |s| s.len());
        if size + 1024 > hablock::control::MAX_REQUEST {
            return fail(
                exit::FAILED,
                format!(
                    "the change is {size} bytes of operations, more than hablockd takes in one request ({}); load it in parts",
                    hablock::control::MAX_REQUEST
                ),
            );
        }
        if let Some(cib) = cib {
            if let Err(e) = crm::precheck(cib, &ops) {
                return fail(exit::REFUSED, e);
            }
        }
        let resp = self.call("cib-change", force, Some(&ops));
        if resp.code != exit::OK {
            return fail(resp.code, &resp.error);
        }
        for m in &resp.messages {
            println!("{m}");
        }
        ExitCode::SUCCESS
    }
}

macro_rules! try_exit {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(code) => return code,
        }
    };
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (id, cfg) = try_exit!(hablock_tools::load("hbcrm", args.config, args.node));
    let d = Daemon {
        socket: cfg.control_socket(&id.node),
    };
    let me = id.node.clone();
    match args.cmd {
        Cmd::Status {
            json,
            failcounts,
            fence_history,
            ..
        } => {
            let resp = d.call("cluster-status", false, None);
            if resp.code != exit::OK {
                return fail(resp.code, &resp.error);
            }
            let Some(st) = resp.cluster else {
                return fail(exit::FAILED, "hablockd answered without a cluster status");
            };
            // The resources need the CIB; without it the membership part is still shown.
            let cib = d.fetch_cib().ok();
            if json {
                let v = status::to_json(&st, cib.as_ref());
                println!("{}", serde_json::to_string_pretty(&v).expect("status serializes"));
            } else {
                let opts = status::Options {
                    failcounts,
                    fence_history,
                    now_unix_ms: now_unix_ms(),
                };
                print!("{}", status::render(&st, cib.as_ref(), opts));
            }
            ExitCode::SUCCESS
        }
        Cmd::Node { cmd } => node_cmd(&d, &me, cmd),
        Cmd::Resource { cmd } => resource_cmd(&d, cmd),
        Cmd::Configure { cmd } => configure_cmd(&d, cmd),
        Cmd::Attribute(a) => attribute_cmd(&d, &me, a),
    }
}

fn now_unix_ms() -> Option<u64> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

fn node_cmd(d: &Daemon, me: &str, cmd: NodeCmd) -> ExitCode {
    let this = |u: Option<String>| u.unwrap_or_else(|| me.to_string());
    let (op, force) = match cmd {
        NodeCmd::Standby { uname, force } => (
            CibOp::SetStandby {
                node: this(uname),
                standby: true,
            },
            force.force,
        ),
        NodeCmd::Online { uname, force } => (
            CibOp::SetStandby {
                node: this(uname),
                standby: false,
            },
            force.force,
        ),
        NodeCmd::Maintenance { uname, force } => (
            CibOp::SetNodeMaintenance {
                node: this(uname),
                maintenance: true,
            },
            force.force,
        ),
        NodeCmd::Ready { uname, force } => (
            CibOp::SetNodeMaintenance {
                node: this(uname),
                maintenance: false,
            },
            force.force,
        ),
        NodeCmd::Clearstate { uname, force } => {
            let cib = try_exit!(d.cib());
            if cib.configuration.node(&uname).is_none() {
                return fail(exit::FAILED, format!("node {uname} is not configured"));
            }
            if cib.status.nodes.get(&uname).is_some_and(|n| n.member) && !force.force {
                return fail(
                    exit::REFUSED,
                    format!("{uname} is a member of the cluster (it is up): clearstate is for a node that is down; --force to insist"),
                );
            }
            let confirmed = CibOp::RecordFencing {
                event: FenceEvent {
                    target: uname.clone(),
                    action: "confirm".into(),
                    ok: true,
                    device: None,
                    delegate: me.to_string(),
                    detail: "confirmed down by an operator (hbcrm node clearstate)".into(),
                    completed_unix_ms: now_unix_ms().unwrap_or(0),
                },
            };
            let reset = CibOp::ResetNode {
                node: uname,
                history: true,
            };
            return d.change(None, vec![reset, confirmed], force.force);
        }
        NodeCmd::Attribute {
            uname,
            verb,
            name,
            value,
        } => {
            let op = match (verb.as_str(), value) {
                ("show", None) => {
                    let cib = try_exit!(d.cib());
                    let Some(n) = cib.configuration.node(&uname) else {
                        return fail(exit::FAILED, format!("node {uname} is not configured"));
                    };
                    return print_attr("nodes", &name, n.attributes.get(&name), false);
                }
                ("set", Some(v)) => CibOp::SetNodeAttribute {
                    node: uname,
                    name,
                    value: Some(v),
                },
                ("delete", None) => CibOp::SetNodeAttribute {
                    node: uname,
                    name,
                    value: None,
                },
                _ => {
                    return fail(
                        exit::FAILED,
                        "expected `attribute NODE set NAME VALUE`, `attribute NODE delete NAME` or `attribute NODE show NAME`",
                    )
                }
            };
            (op, false)
        }
    };
    // The DC checks the node name; no local copy is needed for these.
    d.change(None, vec![op], force)
}

fn resource_cmd(d: &Daemon, cmd: ResourceCmd) -> ExitCode {
    let cib = try_exit!(d.cib());
    let cfg = &cib.configuration;
    let ops = match cmd {
        ResourceCmd::Start { rsc } => resource::start_stop(cfg, &rsc, true),
        ResourceCmd::Stop { rsc } => resource::start_stop(cfg, &rsc, false),
        ResourceCmd::Move { rsc, node, promoted } => resource::move_to(cfg, &rsc, &node, promoted),
        ResourceCmd::Ban { rsc, node } => {
            let node = match node {
                Some(n) => n,
                None => match resource::active_nodes(&cib, &rsc).as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return fail(
                            exit::FAILED,
                            format!("{rsc} is not running anywhere: name the NODE to ban it from"),
                        )
                    }
                    many => {
                        return fail(
                            exit::FAILED,
                            format!("{rsc} is active on {}: name the NODE to ban it from", many.join(", ")),
                        )
                    }
                },
            };
            resource::ban(cfg, &rsc, &node)
        }
        ResourceCmd::Clear { rsc } => resource::clear(cfg, &rsc),
        ResourceCmd::Cleanup { rsc, node } => resource::cleanup(&cib, rsc.as_deref(), node.as_deref()),
        ResourceCmd::Status { rsc } => {
            return match resource::locate(&cib, rsc.as_deref()) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(exit::FAILED, e),
            }
        }
        ResourceCmd::Promote { rsc } => resource::promote_demote(cfg, &rsc, true),
        ResourceCmd::Demote { rsc } => resource::promote_demote(cfg, &rsc, false),
        ResourceCmd::Meta { rsc, verb, name, value } => return attr_verb(d, &cib, &rsc, &verb, &name, value, false),
        ResourceCmd::Param { rsc, verb, name, value } => return attr_verb(d, &cib, &rsc, &verb, &name, value, true),
        ResourceCmd::Manage { rsc } => resource::manage(cfg, &rsc, true),
        ResourceCmd::Unmanage { rsc } => resource::manage(cfg, &rsc, false),
    };
    match ops {
        Ok(ops) => d.change(Some(&cib), ops, false),
        Err(e) => fail(exit::FAILED, e),
    }
}

/// `resource meta|param RSC set|delete|show NAME [VALUE]`.
fn attr_verb(d: &Daemon, cib: &Cib, rsc: &str, verb: &str, name: &str, value: Option<String>, param: bool) -> ExitCode {
    let cfg = &cib.configuration;
    let set = |v: Option<&str>| {
        if param {
            resource::set_param(cfg, rsc, name, v)
        } else {
            resource::set_meta(cfg, rsc, name, v)
        }
    };
    let ops = match (verb, value.as_deref()) {
        ("show", None) => {
            return match resource::get_attr(cfg, rsc, name, param) {
                Ok(v) => print_attr(if param { "params" } else { "meta" }, name, v.as_ref(), false),
                Err(e) => fail(exit::FAILED, e),
            }
        }
        ("set", Some(v)) => set(Some(v)),
        ("delete", None) => set(None),
        _ => {
            return fail(
                exit::FAILED,
                "expected `RSC set NAME VALUE`, `RSC delete NAME` or `RSC show NAME`",
            )
        }
    };
    match ops {
        Ok(ops) => d.change(Some(cib), ops, false),
        Err(e) => fail(exit::FAILED, e),
    }
}

fn configure_cmd(d: &Daemon, cmd: ConfigureCmd) -> ExitCode {
    if let Some((word, line)) = cmd.object() {
        let cib = try_exit!(d.cib());
        let mut words = vec![word.to_string()];
        words.extend(line.words.iter().cloned());
        let ops = if word == "property" {
            property_ops(&line.words)
        } else {
            configure::add_ops(&cib.configuration, &words)
        };
        return match ops {
            Ok(ops) => d.change(Some(&cib), ops, line.force.force),
            Err(e) => fail(exit::FAILED, e),
        };
    }
    match cmd {
        ConfigureCmd::Show { json, ids } => {
            if json && ids.is_empty() {
                let resp = d.call("cib-show", false, None);
                if resp.code != exit::OK {
                    return fail(resp.code, &resp.error);
                }
                let Some(doc) = resp.cluster else {
                    return fail(exit::FAILED, "hablockd answered without a CIB");
                };
                println!("{}", serde_json::to_string_pretty(&doc["cib"]).expect("serialises"));
                return ExitCode::SUCCESS;
            }
            let cib = try_exit!(d.cib());
            let c = &cib.configuration;
            if json {
                let mut objs = Vec::new();
                for id in &ids {
                    let v = if let Some(r) = c.resource(id) {
                        serde_json::to_value(r)
                    } else if let Some(k) = c.constraint(id) {
                        serde_json::to_value(k)
                    } else if let Some(n) = c.node(id) {
                        serde_json::to_value(n)
                    } else {
                        return fail(exit::FAILED, format!("object {id} does not exist"));
                    };
                    objs.push(v.expect("serialises"));
                }
                println!("{}", serde_json::to_string_pretty(&objs).expect("serialises"));
                return ExitCode::SUCCESS;
            }
            if ids.is_empty() {
                print!("{}", crmsh::show(c));
                return ExitCode::SUCCESS;
            }
            match crmsh::show_ids(c, &ids) {
                Ok(t) => {
                    print!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(exit::FAILED, e),
            }
        }
        ConfigureCmd::Delete { force, ids } => {
            let cib = try_exit!(d.cib());
            match configure::delete_ops(&cib.configuration, &cib.status, &ids, force) {
                Ok(ops) => {
                    if let (Err(e), false) = (crm::precheck(&cib, &ops), force) {
                        return fail(
                            exit::REFUSED,
                            format!("{e} (`configure delete --force` also deletes what uses it)"),
                        );
                    }
                    d.change(Some(&cib), ops, false)
                }
                Err(e) => fail(exit::FAILED, e),
            }
        }
        ConfigureCmd::Load { mode, file } => {
            let text = if file == "-" {
                let mut s = String::new();
                if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                    return fail(exit::FAILED, format!("cannot read stdin: {e}"));
                }
                s
            } else {
                match std::fs::read_to_string(&file) {
                    Ok(s) => s,
                    Err(e) => return fail(exit::FAILED, format!("cannot read {file}: {e}")),
                }
            };
            let cib = try_exit!(d.cib());
            match configure::load_ops(&cib.configuration, &text, mode) {
                Ok(ops) => d.change(Some(&cib), ops, false),
                Err(e) => fail(exit::FAILED, format!("{file}: {e}")),
            }
        }
        ConfigureCmd::Edit => edit(d),
        ConfigureCmd::Verify => {
            let cib = try_exit!(d.cib());
            verify(&cib)
        }
        _ => unreachable!("object commands are handled above"),
    }
}

/// `configure edit`: the crm text in $VISUAL/$EDITOR (default vi), then `load replace`. An
/// unchanged file changes nothing; text that does not load is kept for another try.
fn edit(d: &Daemon) -> ExitCode {
    let cib = try_exit!(d.cib());
    let before = crmsh::show(&cib.configuration);
    let path = std::env::temp_dir().join(format!("hbcrm-edit-{}.crm", std::process::id()));
    if let Err(e) = std::fs::write(&path, &before) {
        return fail(exit::FAILED, format!("cannot write {}: {e}", path.display()));
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let editor = env("VISUAL").or_else(|| env("EDITOR")).unwrap_or_else(|| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            let _ = std::fs::remove_file(&path);
            return fail(exit::FAILED, format!("{editor} failed ({s}); nothing changed"));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return fail(exit::FAILED, format!("cannot run {editor}: {e}"));
        }
    }
    let after = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) => return fail(exit::FAILED, format!("cannot read {} back: {e}", path.display())),
    };
    if after == before {
        let _ = std::fs::remove_file(&path);
        eprintln!("hbcrm: configuration unchanged; nothing to do");
        return ExitCode::SUCCESS;
    }
    match configure::load_ops(&cib.configuration, &after, configure::LoadMode::Replace) {
        Ok(ops) => {
            let code = d.change(Some(&cib), ops, false);
            if code == ExitCode::SUCCESS {
                let _ = std::fs::remove_file(&path);
            } else {
                eprintln!("hbcrm: your edit is kept in {}", path.display());
            }
            code
        }
        Err(e) => fail(
            exit::FAILED,
            format!("{e}; nothing changed, your edit is kept in {}", path.display()),
        ),
    }
}

/// `configure verify`: the DC's validation of the whole document, plus a warning for each
/// OCF/LSB agent this node does not have.
fn verify(cib: &Cib) -> ExitCode {
    for p in cib.configuration.resources.iter().filter_map(|r| match r {
        hablock::cluster::cib::config::Resource::Primitive(p) => Some(p),
        _ => None,
    }) {
        let a = &p.agent;
        let path = match (a.class.as_str(), &a.provider) {
            ("ocf", Some(prov)) => {
                let root = std::env::var("OCF_ROOT").unwrap_or_else(|_| "/usr/lib/ocf".into());
                Some(format!("{root}/resource.d/{prov}/{}", a.kind))
            }
            ("lsb", _) => Some(format!("/etc/init.d/{}", a.kind)),
            _ => None,
        };
        if let Some(path) = path {
            if !std::path::Path::new(&path).exists() {
                eprintln!(
                    "hbcrm: WARNING: {}: agent {a} is not installed on this node ({path})",
                    p.id
                );
            }
        }
    }
    match validate::validate(&cib.configuration, &cib.status) {
        Ok(()) => ExitCode::SUCCESS,
        Err(errs) => {
            for e in &errs {
                eprintln!("hbcrm: ERROR: {e}");
            }
            ExitCode::from(exit::FAILED as u8)
        }
    }
}

/// crm_attribute's query output (`scope=status  name=N value=V`; the value alone with
/// `quiet`). A missing attribute is exit code 105, as crm_attribute's.
fn print_attr(scope: &str, name: &str, value: Option<&String>, quiet: bool) -> ExitCode {
    match value {
        Some(v) if quiet => println!("{v}"),
        Some(v) => println!("scope={scope}  name={name} value={v}"),
        None => {
            eprintln!("hbcrm: attribute {name} not found (scope={scope})");
            return ExitCode::from(105);
        }
    }
    ExitCode::SUCCESS
}

fn attribute_cmd(d: &Daemon, me: &str, a: AttributeArgs) -> ExitCode {
    let section = match (a.section.as_deref(), a.lifetime.as_deref()) {
        (Some(s), _) => s.to_string(),
        (None, Some("reboot")) => "status".into(),
        (None, Some("forever")) => "nodes".into(),
        (None, Some(other)) => {
            return fail(
                exit::FAILED,
                format!("--lifetime {other:?}: expected reboot or forever"),
            )
        }
        (None, None) if a.node.is_some() => "nodes".into(),
        (None, None) => "crm_config".into(),
    };
    let node = a.node.clone().unwrap_or_else(|| me.to_string());
    let value = if a.delete { None } else { a.update.clone() };
    if a.update.is_none() && !a.delete {
        let cib = try_exit!(d.cib());
        let c = &cib.configuration;
        let empty = Attrs::new();
        let got = match section.as_str() {
            "status" => cib
                .status
                .nodes
                .get(&node)
                .map_or(&empty, |n| &n.transient_attributes)
                .get(&a.name),
            "nodes" => c.node(&node).map_or(&empty, |n| &n.attributes).get(&a.name),
            "crm_config" => c.properties.get(&a.name),
            "rsc_defaults" => c.rsc_defaults.get(&a.name),
            "op_defaults" => c.op_defaults.get(&a.name),
            other => return fail(exit::FAILED, bad_section(other)),
        };
        return print_attr(&section, &a.name, got, a.quiet);
    }
    let name = a.name.clone();
    let op = match section.as_str() {
        "status" => CibOp::SetTransientAttribute { node, name, value },
        "nodes" => CibOp::SetNodeAttribute { node, name, value },
        "crm_config" => CibOp::SetProperty { name, value },
        "rsc_defaults" => CibOp::SetRscDefault { name, value },
        "op_defaults" => CibOp::SetOpDefault { name, value },
        other => return fail(exit::FAILED, bad_section(other)),
    };
    d.change(None, vec![op], false)
}

fn bad_section(s: &str) -> String {
    format!("--type {s:?}: expected status, nodes, crm_config, rsc_defaults or op_defaults")
}

/// `[SET-ID:] NAME=VALUE ...` as operations, checked here first (the DC checks again): names
/// must be ids, values must suit the option; unknown names are kept with a warning, as crm
/// does.
fn property_ops(words: &[String]) -> Result<Vec<CibOp>, String> {
    let mut ops = Vec::new();
    let mut cfg = Configuration::default();
    for a in words {
        if a.ends_with(':') || a.starts_with("$id=") {
            continue; // the set's id, `cib-bootstrap-options:`
        }
        let Some((name, value)) = a.split_once('=') else {
            return Err(format!("{a:?}: expected NAME=VALUE, e.g. stonith-enabled=false"));
        };
        let name = name.trim();
        if !validate::valid_id(name) {
            return Err(format!("{name:?} is not a valid option name"));
        }
        if !validate::known_property(name) {
            eprintln!(
                "hbcrm: WARNING: {name} is not a cluster option hablock knows (kept as is); known: {}",
                validate::property_names().join(", ")
            );
        }
        let value = (!value.is_empty()).then(|| value.to_string());
        if let Some(v) = &value {
            cfg.properties.insert(name.to_string(), v.clone());
        }
        ops.push(CibOp::SetProperty {
            name: name.to_string(),
            value,
        });
    }
    if ops.is_empty() {
        return Err("property needs NAME=VALUE".into());
    }
    if let Err(errs) = validate::validate(&cfg, &Status::default()) {
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        return Err(msgs.join("; "));
    }
    Ok(ops)
}
