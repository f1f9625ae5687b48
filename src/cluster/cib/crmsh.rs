//! The configuration in crm shell syntax, as `crm configure show` prints it.
//!
//! One function per statement, each producing a [`Statement`] (a head line and continuation
//! clauses) so that the parser of issue 7 can mirror them one for one:
//!
//! ```text
//! node 1: beta \
//!     attributes standby=on
//! primitive mydata ocf:heartbeat:Filesystem \
//!     params device="/dev/drbd0" directory=/mydata fstype=ext4 \
//!     op monitor interval=20s timeout=40s
//! group web myip mydata
//! ms ms_mystor mystor \
//!     meta clone-max=2 notify=true promotable=true
//! clone cl_ping p_ping
//! location loc_web web 100: alpha
//! location loc_ping web rule -inf: not_defined pingd or pingd integer:lte 0
//! colocation myip_with_master inf: myip ms_mystor:Promoted
//! order mydata_after_master Mandatory: ms_mystor:promote mydata:start
//! property cib-bootstrap-options: \
//!     no-quorum-policy=ignore \
//!     stonith-enabled=false
//! rsc_defaults rsc-options: \
//!     resource-stickiness=100
//! op_defaults op-options: \
//!     timeout=60s
//! ```
//!
//! Order: nodes, primitives, groups, clones (`ms` for promotable ones, as the seeds write them),
//! constraints in document order, then `property`, `rsc_defaults`, `op_defaults`. Values that
//! are not plain words are double-quoted with `\"` and `\\` escaped.

use super::config::{
    Attrs, CloneSet, CmpOp, Colocation, Configuration, Constraint, Expression, Group, Location, LocationTarget, Node,
    Operation, Order, OrderKind, Primitive, Resource, Rule, ValueType,
};
use super::score::Score;
use std::fmt::Write as _;

/// One statement: its first line and its continuation clauses (printed after ` \` newlines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub head: String,
    pub clauses: Vec<String>,
}

impl Statement {
    fn new(head: String) -> Statement {
        Statement {
            head,
            clauses: Vec::new(),
        }
    }

    fn render(&self, out: &mut String) {
        out.push_str(&self.head);
        for c in &self.clauses {
            out.push_str(" \\\n\t");
            out.push_str(c);
        }
        out.push('\n');
    }
}

/// A value as crm writes it: bare when it is a plain word, else double-quoted.
pub fn quote(v: &str) -> String {
    let plain = !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/+@%,#".contains(c));
    if plain {
        return v.to_string();
    }
    let mut s = String::from("\"");
    for c in v.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

fn pairs(attrs: &Attrs) -> String {
    attrs
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A duration in milliseconds as crm writes it: `0`, `20s`, `2min`, `500ms`.
pub fn duration(ms: u64) -> String {
    if ms == 0 {
        "0".into()
    } else if ms.is_multiple_of(60_000) && ms >= 120_000 {
        format!("{}min", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A score as a crm constraint prefix: `inf`, `-inf`, or the number.
pub fn score(s: Score) -> String {
    match s.to_string().as_str() {
        "INFINITY" => "inf".into(),
        "-INFINITY" => "-inf".into(),
        other => other.into(),
    }
}

pub fn node(n: &Node) -> Statement {
    let mut s = Statement::new(format!("node {}: {}", n.id, n.name));
    if !n.attributes.is_empty() {
        s.clauses.push(format!("attributes {}", pairs(&n.attributes)));
    }
    s
}

fn op(o: &Operation) -> String {
    let mut s = format!("op {} interval={}", o.name, duration(o.interval_ms));
    if let Some(t) = o.timeout_ms {
        let _ = write!(s, " timeout={}", duration(t));
    }
    if let Some(r) = o.role {
        let _ = write!(s, " role={r}");
    }
    if !o.attrs.is_empty() {
        let _ = write!(s, " {}", pairs(&o.attrs));
    }
    s
}

pub fn primitive(p: &Primitive) -> Statement {
    let mut s = Statement::new(format!("primitive {} {}", p.id, p.agent));
    if !p.params.is_empty() {
        s.clauses.push(format!("params {}", pairs(&p.params)));
    }
    if !p.meta.is_empty() {
        s.clauses.push(format!("meta {}", pairs(&p.meta)));
    }
    s.clauses.extend(p.ops.iter().map(op));
    s
}

pub fn group(g: &Group) -> Statement {
    let mut s = Statement::new(format!("group {} {}", g.id, g.members.join(" ")));
    if !g.meta.is_empty() {
        s.clauses.push(format!("meta {}", pairs(&g.meta)));
    }
    s
}

pub fn clone(c: &CloneSet) -> Statement {
    let word = if c.is_promotable() { "ms" } else { "clone" };
    let mut s = Statement::new(format!("{word} {} {}", c.id, c.child));
    if !c.meta.is_empty() {
        s.clauses.push(format!("meta {}", pairs(&c.meta)));
    }
    s
}

fn expression(e: &Expression) -> String {
    let op = match e.op {
        CmpOp::Eq => "eq",
        CmpOp::Ne => "ne",
        CmpOp::Lt => "lt",
        CmpOp::Lte => "lte",
        CmpOp::Gt => "gt",
        CmpOp::Gte => "gte",
        CmpOp::Defined => return format!("defined {}", e.attribute),
        CmpOp::NotDefined => return format!("not_defined {}", e.attribute),
    };
    let typed = match e.value_type {
        ValueType::String => op.to_string(),
        ValueType::Integer => format!("integer:{op}"),
    };
    format!(
        "{} {typed} {}",
        e.attribute,
        quote(e.value.as_deref().unwrap_or_default())
    )
}

fn rule(r: &Rule) -> String {
    let joiner = match r.boolean_op {
        super::config::BoolOp::And => " and ",
        super::config::BoolOp::Or => " or ",
    };
    let exprs: Vec<String> = r.expressions.iter().map(expression).collect();
    format!("{}: {}", score(r.score), exprs.join(joiner))
}

pub fn location(l: &Location) -> Statement {
    match &l.target {
        LocationTarget::Node { node, score: sc } => {
            let role = l.role.map_or(String::new(), |r| format!(" role={r}"));
            Statement::new(format!("location {} {}{role} {}: {node}", l.id, l.rsc, score(*sc)))
        }
        LocationTarget::Rules(rules) => {
            let role = l.role.map_or(String::new(), |r| format!("$role={r} "));
            let mut s = Statement::new(format!("location {} {}", l.id, l.rsc));
            s.clauses
                .extend(rules.iter().map(|r| format!("rule {role}{}", rule(r))));
            s
        }
    }
}

pub fn colocation(c: &Colocation) -> Statement {
    let with_role = |rsc: &str, role: Option<super::config::Role>| match role {
        Some(r) => format!("{rsc}:{r}"),
        None => rsc.to_string(),
    };
    Statement::new(format!(
        "colocation {} {}: {} {}",
        c.id,
        score(c.score),
        with_role(&c.rsc, c.rsc_role),
        with_role(&c.with_rsc, c.with_rsc_role)
    ))
}

pub fn order(o: &Order) -> Statement {
    let kind = match o.kind {
        OrderKind::Mandatory => "Mandatory",
        OrderKind::Optional => "Optional",
        OrderKind::Serialize => "Serialize",
    };
    let mut head = format!(
        "order {} {kind}: {}:{} {}:{}",
        o.id, o.first, o.first_action, o.then, o.then_action
    );
    if let Some(sym) = o.symmetrical {
        let _ = write!(head, " symmetrical={sym}");
    }
    Statement::new(head)
}

fn options(word: &str, set: &str, attrs: &Attrs) -> Option<Statement> {
    (!attrs.is_empty()).then(|| Statement {
        head: format!("{word} {set}:"),
        clauses: attrs.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect(),
    })
}

/// `fencing_topology` with one clause per node: `NODE: DEV1,DEV2 DEV3` (levels by index, the
/// devices of a level joined by commas), nodes in order of their first level. `None` without
/// levels. crm shell prints it after the constraints.
pub fn fencing_topology(cfg: &Configuration) -> Option<Statement> {
    let mut targets: Vec<&str> = Vec::new();
    for l in &cfg.fencing_topology {
        if !targets.contains(&l.target.as_str()) {
            targets.push(&l.target);
        }
    }
    (!targets.is_empty()).then(|| Statement {
        head: "fencing_topology".into(),
        clauses: targets
            .iter()
            .map(|t| {
                let levels: Vec<String> = cfg.fencing_levels(t).iter().map(|l| l.devices.join(",")).collect();
                format!("{t}: {}", levels.join(" "))
            })
            .collect(),
    })
}

/// Every statement of the configuration, in the order `show` prints them.
pub fn statements(cfg: &Configuration) -> Vec<Statement> {
    let mut out: Vec<Statement> = cfg.nodes.iter().map(node).collect();
    for kind in 0..3 {
        for r in &cfg.resources {
            match (kind, r) {
                (0, Resource::Primitive(p)) => out.push(primitive(p)),
                (1, Resource::Group(g)) => out.push(group(g)),
                (2, Resource::Clone(c)) => out.push(clone(c)),
                _ => {}
            }
        }
    }
    for c in &cfg.constraints {
        out.push(match c {
            Constraint::Location(l) => location(l),
            Constraint::Colocation(c) => colocation(c),
            Constraint::Order(o) => order(o),
        });
    }
    out.extend(options("property", "cib-bootstrap-options", &cfg.properties));
    out.extend(options("rsc_defaults", "rsc-options", &cfg.rsc_defaults));
    out.extend(options("op_defaults", "op-options", &cfg.op_defaults));
    out
}

/// `crm configure show ID...`: the statements of the named nodes, resources and constraints
/// (and `property`/`cib-bootstrap-options`, `rsc_defaults`/`rsc-options`,
/// `op_defaults`/`op-options`), in the order `show` prints them. An unknown id is an error.
pub fn show_ids(cfg: &Configuration, ids: &[String]) -> Result<String, String> {
    let mut wanted = Vec::new();
    for id in ids {
        let key = match id.as_str() {
            "property" | "cib-bootstrap-options" => "property".to_string(),
            "rsc_defaults" | "rsc-options" => "rsc_defaults".to_string(),
            "op_defaults" | "op-options" => "op_defaults".to_string(),
            other if cfg.node(other).is_some() || cfg.resource(other).is_some() || cfg.constraint(other).is_some() => {
                other.to_string()
            }
            other => return Err(format!("object {other} does not exist")),
        };
        wanted.push(key);
    }
    let mut out = String::new();
    for st in statements(cfg) {
        if wanted.iter().any(|w| statement_id(&st) == Some(w.as_str())) {
            st.render(&mut out);
        }
    }
    Ok(out)
}

/// The id a statement defines: the node name, resource or constraint id, or the option word.
fn statement_id(st: &Statement) -> Option<&str> {
    let mut words = st.head.split_whitespace();
    match words.next()? {
        "node" => words.nth(1),
        w @ ("property" | "rsc_defaults" | "op_defaults") => Some(w),
        _ => words.next(),
    }
}

/// `crm configure show`.
pub fn show(cfg: &Configuration) -> String {
    let mut s = String::new();
    for st in statements(cfg) {
        st.render(&mut s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::cib::config::{Action, BoolOp, Role};

    #[test]
    fn prints_the_seed_configuration() {
        let mut cfg = Configuration::default();
        cfg.nodes.push(Node::new("alpha", 0));
        let mut beta = Node::new("beta", 1);
        beta.attributes.insert("standby".into(), "on".into());
        cfg.nodes.push(beta);
        let data = Primitive::new("mydata", "Filesystem")
            .unwrap()
            .param("device", "/dev/drbd0")
            .param("directory", "/mydata")
            .param("fstype", "ext4")
            .op(Operation::new("monitor", "20s", Some("40s")).unwrap())
            .op(Operation::new("start", "0", Some("60s")).unwrap());
        let stor = Primitive::new("mystor", "ocf:linbit:drbd")
            .unwrap()
            .param("drbd_resource", "mystore")
            .op(Operation::new("monitor", "10s", Some("20s"))
                .unwrap()
                .with_role(Role::Promoted));
        cfg.resources.push(data.into());
        cfg.resources.push(stor.into());
        cfg.resources.push(
            CloneSet::promotable("ms_mystor", "mystor")
                .meta("clone-max", "2")
                .meta("notify", "true")
                .into(),
        );
        cfg.constraints.push(Constraint::Colocation(
            Colocation::new("mydata_with_master", Score::INFINITY, "mydata", "ms_mystor").with_role(Role::Promoted),
        ));
        cfg.constraints.push(Constraint::Order(Order::new(
            "mydata_after_master",
            OrderKind::Mandatory,
            ("ms_mystor", Action::Promote),
            ("mydata", Action::Start),
        )));
        cfg.constraints.push(Constraint::Location(Location {
            id: "loc_ping".into(),
            rsc: "mydata".into(),
            role: None,
            target: LocationTarget::Rules(vec![Rule {
                score: Score::NEG_INFINITY,
                boolean_op: BoolOp::Or,
                expressions: vec![
                    Expression::new("pingd", CmpOp::NotDefined, None),
                    Expression {
                        value_type: ValueType::Integer,
                        ..Expression::new("pingd", CmpOp::Lte, Some("0"))
                    },
                ],
            }]),
        }));
        cfg.constraints.push(Constraint::Location(Location::on_node(
            "prefer_alpha",
            "mydata",
            Score::from(50),
            "alpha",
        )));
        cfg.properties.insert("stonith-enabled".into(), "false".into());
        cfg.properties
            .insert("cluster-infrastructure".into(), "classic openais".into());
        cfg.rsc_defaults.insert("resource-stickiness".into(), "100".into());
        let text = show(&cfg);
        let want = "\
node 0: alpha
node 1: beta \\
\tattributes standby=on
primitive mydata ocf:heartbeat:Filesystem \\
\tparams device=/dev/drbd0 directory=/mydata fstype=ext4 \\
\top monitor interval=20s timeout=40s \\
\top start interval=0 timeout=60s
primitive mystor ocf:linbit:drbd \\
\tparams drbd_resource=mystore \\
\top monitor interval=10s timeout=20s role=Promoted
ms ms_mystor mystor \\
\tmeta clone-max=2 notify=true promotable=true
colocation mydata_with_master inf: mydata ms_mystor:Promoted
order mydata_after_master Mandatory: ms_mystor:promote mydata:start
location loc_ping mydata \\
\trule -inf: not_defined pingd or pingd integer:lte 0
location prefer_alpha mydata 50: alpha
property cib-bootstrap-options: \\
\tcluster-infrastructure=\"classic openais\" \\
\tstonith-enabled=false
rsc_defaults rsc-options: \\
\tresource-stickiness=100
";
        assert_eq!(text, want, "\n{text}");
    }

    #[test]
    fn show_reads_back_and_selects_ids() {
        use crate::cluster::pengine::crm_syntax;
        let text = "node 0: alpha \\\n attributes standby=off note=\"a \\\"b\\\" \\\\c\"\n\
                    node 1: beta\n\
                    primitive p Dummy params fake=\"x y\" meta target-role=Stopped \\\n op monitor interval=10s role=Promoted timeout=20s\n\
                    primitive q ocf:heartbeat:IPaddr2 params ip=10.0.0.9\n\
                    group g q\n\
                    ms ms_p p meta notify=true\n\
                    location cli-prefer-g g role=Started inf: alpha\n\
                    location l2 g rule $role=Promoted -inf: not_defined pingd or pingd integer:lte 0\n\
                    colocation c inf: g ms_p:Master\n\
                    order o Mandatory: ms_p:promote g:start symmetrical=false\n\
                    property stonith-enabled=false\n\
                    op_defaults timeout=30s\n";
        let cfg = crm_syntax::parse(text).unwrap();
        assert_eq!(cfg.node("alpha").unwrap().attributes["note"], "a \"b\" \\c");
        let shown = show(&cfg);
        let again = crm_syntax::parse(&shown).unwrap_or_else(|e| panic!("{e}\n{shown}"));
        assert_eq!(again, cfg, "{shown}");
        let some = show_ids(&cfg, &["g".into(), "beta".into(), "property".into(), "o".into()]).unwrap();
        assert_eq!(
            some,
            "node 1: beta\ngroup g q\norder o Mandatory: ms_p:promote g:start symmetrical=false\n\
             property cib-bootstrap-options: \\\n\tstonith-enabled=false\n"
        );
        assert_eq!(
            show_ids(&cfg, &["nope".into()]).unwrap_err(),
            "object nope does not exist"
        );
    }

    #[test]
    fn quoting_and_durations() {
        assert_eq!(quote("plain-word_1.2"), "plain-word_1.2");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a \"b\" \\c"), "\"a \\\"b\\\" \\\\c\"");
        assert_eq!(duration(0), "0");
        assert_eq!(duration(500), "500ms");
        assert_eq!(duration(60_000), "60s");
        assert_eq!(duration(240_000), "4min");
    }
}
