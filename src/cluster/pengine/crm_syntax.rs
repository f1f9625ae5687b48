//! A reader for crm shell's `configure` syntax, used by the policy engine's tables and by
//! `hbcrm configure` (object lines, `load`, `edit`): `node` (also the older `node $id="..." NAME`
//! and `NAME:normal`), `primitive`, `group`, `clone`, `ms`/`master`/`promotable`, `location`
//! (node score or rules), `colocation` (two resources, with roles), `order` (two resources, with
//! actions, kind or score, `symmetrical=`), `property`, `rsc_defaults`, `op_defaults`,
//! `fencing_topology` (`NODE: DEV1,DEV2 DEV3 ...`: one level per word, the devices of a level
//! joined by commas; levels without a node apply to every node named so far). It reads back
//! everything `cib::crmsh::show` prints.
//!
//! Lines ending in `\` continue on the next line; `#` starts a comment outside quotes. Values may
//! be quoted with `"` (the quotes are dropped; inside them `\"` and `\\` are a quote and a
//! backslash). Resource sets (`( ... )`, `[ ... ]`) are not supported and are reported as
//! errors. Nothing here panics on bad input: every problem is a
//! [`CrmError`] naming the line.

use crate::cluster::cib::config::{
    Attrs, BoolOp, CloneSet, CmpOp, Colocation, Constraint, Expression, FencingLevel, Group, Location, LocationTarget,
    Node, Operation, Order, OrderKind, Primitive, Resource, Role, Rule, ValueType,
};
use crate::cluster::cib::{Configuration, Score};
use std::fmt;

/// A problem in crm text: the (first) line of the command and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for CrmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for CrmError {}

/// Reads crm shell configuration text into a [`Configuration`]. Nodes get ids 0, 1, ... in the
/// order they appear. The result is not validated here (see `cib::validate`).
pub fn parse(text: &str) -> Result<Configuration, CrmError> {
    let mut cfg = Configuration::default();
    for (line, cmd) in commands(text) {
        let toks = tokenize(&cmd).map_err(|message| CrmError { line, message })?;
        if toks.is_empty() {
            continue;
        }
        command(&mut cfg, &toks).map_err(|message| CrmError { line, message })?;
    }
    Ok(cfg)
}

/// Joins continuation lines; yields (first line number, command text).
fn commands(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let l = strip_comment(raw);
        if cur.is_empty() {
            start = i + 1;
        }
        let t = l.trim_end();
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
        } else {
            cur.push_str(t);
            if !cur.trim().is_empty() {
                out.push((start, std::mem::take(&mut cur)));
            }
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push((start, cur));
    }
    out
}

fn strip_comment(l: &str) -> &str {
    let mut inq = false;
    let mut escaped = false;
    for (i, c) in l.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if inq => escaped = true,
            '"' => inq = !inq,
            '#' if !inq => {
                // `#uname` inside a rule is an attribute, not a comment: a comment starts a word
                // only at the line start or after whitespace followed by a space or end.
                let rest = &l[i + 1..];
                let at_word_start = i == 0 || l[..i].ends_with(char::is_whitespace);
                let is_attr = rest.starts_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '_');
                if at_word_start && !is_attr {
                    return &l[..i];
                }
                if i == 0 {
                    return "";
                }
            }
            _ => {}
        }
    }
    l
}

fn tokenize(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut inq = false;
    let mut have = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            // Inside quotes `\"` and `\\` stand for `"` and `\` (as crm shell writes them).
            '\\' if inq => match chars.next() {
                Some(n) => cur.push(n),
                None => return Err("unterminated quote".into()),
            },
            '"' => {
                inq = !inq;
                have = true;
            }
            c if c.is_whitespace() && !inq => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            c => {
                cur.push(c);
                have = true;
            }
        }
    }
    if inq {
        return Err("unterminated quote".into());
    }
    if have {
        out.push(cur);
    }
    Ok(out)
}

fn kv(tok: &str) -> Option<(String, String)> {
    let (k, v) = tok.split_once('=')?;
    if k.is_empty() {
        return None;
    }
    Some((k.to_string(), v.to_string()))
}

/// Splits `RSC:ROLE_OR_ACTION`.
fn split_colon(tok: &str) -> (&str, Option<&str>) {
    match tok.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (tok, None),
    }
}

fn reject_sets(toks: &[String]) -> Result<(), String> {
    if toks
        .iter()
        .any(|t| t.starts_with(['(', '[', '{']) || t.ends_with([')', ']', '}']))
    {
        return Err("resource sets are not supported; use one constraint per pair".into());
    }
    Ok(())
}

fn command(cfg: &mut Configuration, t: &[String]) -> Result<(), String> {
    let need = |n: usize, what: &str| {
        if t.len() < n {
            Err(format!("{} needs {what}", t[0]))
        } else {
            Ok(())
        }
    };
    match t[0].as_str() {
        "node" => {
            need(2, "a node name")?;
            // Older crm shells write `node $id="UUID" NAME`: the id is Corosync's, not ours.
            let t = if t[1].starts_with("$id=") { &t[1..] } else { t };
            if t.len() < 2 {
                return Err("node needs a name".into());
            }
            let mut name = t[1].as_str();
            let mut rest = &t[2..];
            let mut id = u8::try_from(cfg.nodes.len()).map_err(|_| "too many nodes".to_string())?;
            // `node ID: NAME` form; a numeric ID is the node's id.
            if let Some(stripped) = name.strip_suffix(':') {
                if rest.is_empty() {
                    return Err(format!("node {stripped}: needs a name"));
                }
                if let Ok(n) = stripped.parse::<u8>() {
                    id = n;
                }
                name = rest[0].as_str();
                rest = &rest[1..];
            }
            // `NAME:normal` (crm's node type); other types are not nodes hablock runs.
            if let Some(base) = name.strip_suffix(":normal").or_else(|| name.strip_suffix(":member")) {
                name = base;
            }
            let mut node = Node::new(name, id);
            let mut in_attrs = false;
            for tok in rest {
                match tok.as_str() {
                    "attributes" => in_attrs = true,
                    "utilization" => in_attrs = false,
                    _ if in_attrs => {
                        let (k, v) = kv(tok).ok_or_else(|| format!("node {name}: expected NAME=VALUE, got {tok:?}"))?;
                        node.attributes.insert(k, v);
                    }
                    _ => {}
                }
            }
            if cfg.node(name).is_some() {
                return Err(format!("node {name} is defined twice"));
            }
            cfg.nodes.push(node);
        }
        "primitive" => {
            need(3, "an id and an agent")?;
            let mut p = Primitive::new(&t[1], &t[2]).map_err(|e| format!("primitive {}: {e}", t[1]))?;
            let mut section = "";
            let mut op_name_next = false;
            for tok in &t[3..] {
                match tok.as_str() {
                    "params" | "meta" | "utilization" => section = leak_section(tok),
                    "op" => {
                        if op_name_next {
                            return Err(format!("primitive {}: op without a name", t[1]));
                        }
                        section = "op";
                        op_name_next = true;
                    }
                    _ => match section {
                        "op" => {
                            if op_name_next {
                                op_name_next = false;
                                let mut op = Operation::new("monitor", "0", None)?;
                                op.name = tok.parse().map_err(|e| format!("primitive {}: {e}", t[1]))?;
                                p.ops.push(op);
                                continue;
                            }
                            let op = p.ops.last_mut().ok_or("op without a name")?;
                            let (k, v) = kv(tok)
                                .ok_or_else(|| format!("primitive {}: expected NAME=VALUE, got {tok:?}", t[1]))?;
                            let bad = |e: String| format!("primitive {}: op {}: {e}", t[1], op.name);
                            match k.as_str() {
                                "interval" => {
                                    op.interval_ms = crate::cluster::cib::config::parse_duration_ms(&v).map_err(bad)?
                                }
                                "timeout" => {
                                    op.timeout_ms =
                                        Some(crate::cluster::cib::config::parse_duration_ms(&v).map_err(bad)?)
                                }
                                "role" => op.role = Some(v.parse().map_err(bad)?),
                                _ => {
                                    op.attrs.insert(k, v);
                                }
                            }
                        }
                        "params" | "meta" => {
                            let (k, v) = kv(tok)
                                .ok_or_else(|| format!("primitive {}: expected NAME=VALUE, got {tok:?}", t[1]))?;
                            if section == "params" {
                                p.params.insert(k, v);
                            } else {
                                p.meta.insert(k, v);
                            }
                        }
                        "utilization" => {}
                        _ => return Err(format!("primitive {}: unexpected {tok:?}", t[1])),
                    },
                }
            }
            if op_name_next {
                return Err(format!("primitive {}: op without a name", t[1]));
            }
            add_resource(cfg, p.into())?;
        }
        "group" => {
            need(3, "an id and members")?;
            let mut g = Group::new(&t[1], &[]);
            let (members, meta) = split_meta(&t[2..], &t[1])?;
            g.members = members;
            g.meta = meta;
            if g.members.is_empty() {
                return Err(format!("group {} has no members", t[1]));
            }
            add_resource(cfg, g.into())?;
        }
        "clone" | "ms" | "master" | "promotable" => {
            need(3, "an id and a child")?;
            let (children, meta) = split_meta(&t[2..], &t[1])?;
            if children.len() != 1 {
                return Err(format!("{} {} must name exactly one child", t[0], t[1]));
            }
            let mut c = CloneSet::new(&t[1], &children[0]);
            c.meta = meta;
            if t[0] != "clone" {
                c.meta.insert("promotable".into(), "true".into());
            }
            add_resource(cfg, c.into())?;
        }
        "location" => {
            need(4, "an id, a resource and a score")?;
            reject_sets(t)?;
            let id = &t[1];
            let rsc = &t[2];
            let mut rest = &t[3..];
            let mut role = None;
            if rest.first().map(String::as_str) == Some("rule") {
                rest = &rest[1..];
                let mut rules = Vec::new();
                // Rules are separated by the word `rule`.
                for chunk in rest.split(|s| s == "rule") {
                    let mut chunk = chunk;
                    while let Some(first) = chunk.first() {
                        if let Some(r) = first.strip_prefix("$role=").or_else(|| first.strip_prefix("role=")) {
                            role = Some(r.parse::<Role>().map_err(|e| format!("location {id}: {e}"))?);
                            chunk = &chunk[1..];
                        } else if first.starts_with("$id=") {
                            chunk = &chunk[1..];
                        } else {
                            break;
                        }
                    }
                    rules.push(rule(chunk).map_err(|e| format!("location {id}: {e}"))?);
                }
                cfg.constraints.push(Constraint::Location(Location {
                    id: id.clone(),
                    rsc: rsc.clone(),
                    role,
                    target: LocationTarget::Rules(rules),
                }));
            } else {
                if let Some(r) = rest.first().and_then(|f| f.strip_prefix("role=")) {
                    role = Some(r.parse::<Role>().map_err(|e| format!("location {id}: {e}"))?);
                    rest = &rest[1..];
                }
                if rest.len() != 2 {
                    return Err(format!("location {id}: expected SCORE: NODE"));
                }
                let score = score_colon(&rest[0]).map_err(|e| format!("location {id}: {e}"))?;
                let mut loc = Location::on_node(id, rsc, score, &rest[1]);
                loc.role = role;
                cfg.constraints.push(Constraint::Location(loc));
            }
        }
        "colocation" | "collocation" => {
            reject_sets(t)?;
            if t.len() != 5 {
                return Err(format!(
                    "colocation {}: expected `colocation ID SCORE: RSC[:ROLE] WITH-RSC[:ROLE]`",
                    t.get(1).map(String::as_str).unwrap_or("")
                ));
            }
            let id = &t[1];
            let score = score_colon(&t[2]).map_err(|e| format!("colocation {id}: {e}"))?;
            let (a, ar) = split_colon(&t[3]);
            let (b, br) = split_colon(&t[4]);
            let role = |r: Option<&str>| -> Result<Option<Role>, String> {
                r.map(|r| r.parse::<Role>().map_err(|e| format!("colocation {id}: {e}")))
                    .transpose()
            };
            let mut c = Colocation::new(id, score, a, b);
            c.rsc_role = role(ar)?;
            c.with_rsc_role = role(br)?;
            cfg.constraints.push(Constraint::Colocation(c));
        }
        "order" => {
            reject_sets(t)?;
            need(4, "an id and two resources")?;
            let id = &t[1];
            let mut rest = &t[2..];
            let mut kind = OrderKind::Mandatory;
            if let Some(k) = rest[0].strip_suffix(':') {
                kind = match k.parse::<OrderKind>() {
                    Ok(k) => k,
                    Err(_) => {
                        let s: Score = k
                            .parse()
                            .map_err(|_| format!("order {id}: {k:?} is neither a kind nor a score"))?;
                        if s.value() > 0 {
                            OrderKind::Mandatory
                        } else {
                            OrderKind::Optional
                        }
                    }
                };
                rest = &rest[1..];
            }
            let mut symmetrical = None;
            let mut rs = Vec::new();
            for tok in rest {
                if let Some(v) = tok.strip_prefix("symmetrical=") {
                    symmetrical = Some(
                        crate::cluster::cib::config::parse_bool(v)
                            .ok_or_else(|| format!("order {id}: symmetrical={v:?} is not a boolean"))?,
                    );
                } else {
                    rs.push(tok.as_str());
                }
            }
            if rs.len() != 2 {
                return Err(format!("order {id}: expected exactly two resources"));
            }
            let act = |tok: &str| -> Result<(String, crate::cluster::cib::config::Action), String> {
                let (r, a) = split_colon(tok);
                let a = a.unwrap_or("start").parse().map_err(|e| format!("order {id}: {e}"))?;
                Ok((r.to_string(), a))
            };
            let (f, fa) = act(rs[0])?;
            let (th, ta) = act(rs[1])?;
            let mut o = Order::new(id, kind, (&f, fa), (&th, ta));
            o.symmetrical = symmetrical;
            cfg.constraints.push(Constraint::Order(o));
        }
        "property" | "rsc_defaults" | "op_defaults" => {
            let target: &mut Attrs = match t[0].as_str() {
                "property" => &mut cfg.properties,
                "rsc_defaults" => &mut cfg.rsc_defaults,
                _ => &mut cfg.op_defaults,
            };
            for tok in &t[1..] {
                if tok.ends_with(':') || tok.starts_with("$id=") {
                    continue; // the set's id (`cib-bootstrap-options:`)
                }
                let (k, v) = kv(tok).ok_or_else(|| format!("{}: expected NAME=VALUE, got {tok:?}", t[0]))?;
                target.insert(k, v);
            }
        }
        "fencing_topology" => fencing_topology(cfg, &t[1..])?,
        other => return Err(format!("{other:?} is not a configure command this reader knows")),
    }
    Ok(())
}

/// Writes a configuration in crm shell syntax (as `crm configure show` does); [`parse`] reads
/// it back to the same configuration.
pub fn print(cfg: &Configuration) -> String {
    let mut out = String::new();
    let cont = " \\\n\t";
    for n in &cfg.nodes {
        out.push_str(&format!("node {}: {}", n.id, n.name));
        if !n.attributes.is_empty() {
            out.push_str(&format!("{cont}attributes{}", kvs(&n.attributes)));
        }
        out.push('\n');
    }
    for r in &cfg.resources {
        match r {
            Resource::Primitive(p) => {
                out.push_str(&format!("primitive {} {}", p.id, p.agent));
                if !p.params.is_empty() {
                    out.push_str(&format!("{cont}params{}", kvs(&p.params)));
                }
                if !p.meta.is_empty() {
                    out.push_str(&format!("{cont}meta{}", kvs(&p.meta)));
                }
                for o in &p.ops {
                    out.push_str(&format!("{cont}op {} interval={}", o.name, dur(o.interval_ms)));
                    if let Some(t) = o.timeout_ms {
                        out.push_str(&format!(" timeout={}", dur(t)));
                    }
                    if let Some(r) = o.role {
                        out.push_str(&format!(" role={r}"));
                    }
                    out.push_str(&kvs(&o.attrs));
                }
            }
            Resource::Group(g) => {
                out.push_str(&format!("group {} {}", g.id, g.members.join(" ")));
                if !g.meta.is_empty() {
                    out.push_str(&format!("{cont}meta{}", kvs(&g.meta)));
                }
            }
            Resource::Clone(c) => {
                let mut meta = c.meta.clone();
                let word = if c.is_promotable() {
                    meta.remove("promotable");
                    "ms"
                } else {
                    "clone"
                };
                out.push_str(&format!("{word} {} {}", c.id, c.child));
                if !meta.is_empty() {
                    out.push_str(&format!("{cont}meta{}", kvs(&meta)));
                }
            }
        }
        out.push('\n');
    }
    for c in &cfg.constraints {
        match c {
            Constraint::Location(l) => {
                out.push_str(&format!("location {} {}", l.id, l.rsc));
                match &l.target {
                    LocationTarget::Node { node, score } => {
                        if let Some(r) = l.role {
                            out.push_str(&format!(" role={r}"));
                        }
                        out.push_str(&format!(" {score}: {node}"));
                    }
                    LocationTarget::Rules(rules) => {
                        for (i, r) in rules.iter().enumerate() {
                            out.push_str(" rule");
                            if let (0, Some(role)) = (i, l.role) {
                                out.push_str(&format!(" $role={role}"));
                            }
                            out.push_str(&format!(" {}:", r.score));
                            let join = if r.boolean_op == BoolOp::Or { " or" } else { " and" };
                            for (j, e) in r.expressions.iter().enumerate() {
                                if j > 0 {
                                    out.push_str(join);
                                }
                                out.push_str(&expr(e));
                            }
                        }
                    }
                }
            }
            Constraint::Colocation(c) => {
                let side = |r: &str, role: Option<Role>| match role {
                    Some(role) => format!("{r}:{role}"),
                    None => r.to_string(),
                };
                out.push_str(&format!(
                    "colocation {} {}: {} {}",
                    c.id,
                    c.score,
                    side(&c.rsc, c.rsc_role),
                    side(&c.with_rsc, c.with_rsc_role)
                ));
            }
            Constraint::Order(o) => {
                let kind = match o.kind {
                    OrderKind::Mandatory => "Mandatory",
                    OrderKind::Optional => "Optional",
                    OrderKind::Serialize => "Serialize",
                };
                out.push_str(&format!(
                    "order {} {kind}: {}:{} {}:{}",
                    o.id, o.first, o.first_action, o.then, o.then_action
                ));
                if let Some(s) = o.symmetrical {
                    out.push_str(&format!(" symmetrical={s}"));
                }
            }
        }
        out.push('\n');
    }
    if !cfg.fencing_topology.is_empty() {
        out.push_str("fencing_topology");
        let mut targets: Vec<&str> = Vec::new();
        for l in &cfg.fencing_topology {
            if !targets.contains(&l.target.as_str()) {
                targets.push(&l.target);
            }
        }
        for t in targets {
            out.push_str(&format!("{cont}{t}:"));
            for l in cfg.fencing_levels(t) {
                out.push_str(&format!(" {}", l.devices.join(",")));
            }
        }
        out.push('\n');
    }
    for (word, id, attrs) in [
        ("property", "cib-bootstrap-options", &cfg.properties),
        ("rsc_defaults", "rsc-options", &cfg.rsc_defaults),
        ("op_defaults", "op-options", &cfg.op_defaults),
    ] {
        if !attrs.is_empty() {
            out.push_str(&format!("{word} {id}:"));
            for (k, v) in attrs {
                out.push_str(&format!("{cont}{k}={}", quote(v)));
            }
            out.push('\n');
        }
    }
    out
}

fn quote(v: &str) -> String {
    crate::cluster::cib::crmsh::quote(v)
}

fn kvs(a: &Attrs) -> String {
    a.iter().map(|(k, v)| format!(" {k}={}", quote(v))).collect()
}

fn dur(ms: u64) -> String {
    if ms == 0 {
        "0".into()
    } else if (ms / 1000) * 1000 == ms {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn expr(e: &Expression) -> String {
    match (e.op, &e.value) {
        (CmpOp::Defined, _) => format!(" defined {}", e.attribute),
        (CmpOp::NotDefined, _) => format!(" not_defined {}", e.attribute),
        (op, v) => {
            let name = match op {
                CmpOp::Eq => "eq",
                CmpOp::Ne => "ne",
                CmpOp::Lt => "lt",
                CmpOp::Lte => "lte",
                CmpOp::Gt => "gt",
                _ => "gte",
            };
            let ty = if e.value_type == ValueType::Integer {
                "number:"
            } else {
                ""
            };
            format!(" {} {ty}{name} {}", e.attribute, quote(v.as_deref().unwrap_or("")))
        }
    }
}

/// `fencing_topology [NODE:] LEVEL... [NODE: LEVEL...]...` where a LEVEL is `DEV[,DEV...]`.
/// Levels get indexes 1, 2, ... per node in the order written. Levels before any `NODE:` apply
/// to every node configured so far (as crm shell does); `attr:NAME=VALUE` and pattern targets
/// are not supported.
fn fencing_topology(cfg: &mut Configuration, toks: &[String]) -> Result<(), String> {
    if toks.is_empty() {
        return Err("fencing_topology needs at least one level".into());
    }
    let mut levels: Vec<FencingLevel> = Vec::new();
    let mut target: Option<String> = None;
    let add = |levels: &mut Vec<FencingLevel>, node: &str, devices: Vec<String>| {
        let index = levels.iter().filter(|l| l.target == node).count() as u32 + 1;
        levels.push(FencingLevel {
            target: node.to_string(),
            index,
            devices,
        });
    };
    for tok in toks {
        if let Some(node) = tok.strip_suffix(':') {
            if node.is_empty() || node.contains([':', ',', '=']) {
                return Err(format!(
                    "fencing_topology: {tok:?} is not a node target (attribute and pattern targets are not supported)"
                ));
            }
            if levels.iter().any(|l| l.target == node) || target.as_deref() == Some(node) {
                return Err(format!("fencing_topology: node {node} is named twice"));
            }
            target = Some(node.to_string());
            continue;
        }
        let devices: Vec<String> = tok.split(',').map(str::to_string).collect();
        if devices.iter().any(|d| d.is_empty() || d.contains([':', '='])) {
            return Err(format!(
                "fencing_topology: {tok:?} is not a level: expected DEVICE or DEVICE,DEVICE,..."
            ));
        }
        match &target {
            Some(node) => add(&mut levels, node, devices),
            None => {
                if cfg.nodes.is_empty() {
                    return Err(format!(
                        "fencing_topology: level {tok:?} names no node and no node is configured before it; write NODE: {tok}"
                    ));
                }
                let nodes: Vec<String> = cfg.nodes.iter().map(|n| n.name.clone()).collect();
                for n in nodes {
                    add(&mut levels, &n, devices.clone());
                }
            }
        }
    }
    if let Some(node) = target.filter(|n| !levels.iter().any(|l| &l.target == n)) {
        return Err(format!("fencing_topology: node {node}: has no levels"));
    }
    if !cfg.fencing_topology.is_empty() {
        return Err("fencing_topology is given twice; write all levels in one statement".into());
    }
    cfg.fencing_topology = levels;
    Ok(())
}

fn leak_section(tok: &str) -> &'static str {
    match tok {
        "params" => "params",
        "meta" => "meta",
        _ => "utilization",
    }
}

fn split_meta(toks: &[String], id: &str) -> Result<(Vec<String>, Attrs), String> {
    let mut names = Vec::new();
    let mut meta = Attrs::new();
    let mut in_meta = false;
    for tok in toks {
        if tok == "meta" {
            in_meta = true;
        } else if tok == "params" {
            return Err(format!("{id}: params belong on primitives"));
        } else if in_meta {
            let (k, v) = kv(tok).ok_or_else(|| format!("{id}: expected NAME=VALUE, got {tok:?}"))?;
            meta.insert(k, v);
        } else {
            names.push(tok.clone());
        }
    }
    Ok((names, meta))
}

fn add_resource(cfg: &mut Configuration, r: Resource) -> Result<(), String> {
    if cfg.resource(r.id()).is_some() {
        return Err(format!("resource {} is defined twice", r.id()));
    }
    cfg.resources.push(r);
    Ok(())
}

fn score_colon(tok: &str) -> Result<Score, String> {
    let s = tok
        .strip_suffix(':')
        .ok_or_else(|| format!("expected a score followed by ':', got {tok:?}"))?;
    match s.to_ascii_lowercase().as_str() {
        "mandatory" => Ok(Score::INFINITY),
        "advisory" | "optional" => Ok(Score::ZERO),
        _ => s.parse(),
    }
}

/// `SCORE: EXPR [and|or EXPR]...`
fn rule(toks: &[String]) -> Result<Rule, String> {
    let (first, rest) = toks.split_first().ok_or("rule needs a score")?;
    let score = score_colon(first)?;
    let mut exprs = Vec::new();
    let mut op: Option<BoolOp> = None;
    let mut i = 0;
    while i < rest.len() {
        let t = rest[i].as_str();
        if t == "and" || t == "or" {
            let b = if t == "and" { BoolOp::And } else { BoolOp::Or };
            if op.is_some_and(|o| o != b) {
                return Err("a rule cannot mix `and` and `or`".into());
            }
            op = Some(b);
            i += 1;
            continue;
        }
        if t == "defined" || t == "not_defined" {
            let attr = rest.get(i + 1).ok_or_else(|| format!("{t} needs an attribute"))?;
            let cmp = if t == "defined" {
                CmpOp::Defined
            } else {
                CmpOp::NotDefined
            };
            exprs.push(Expression::new(attr, cmp, None));
            i += 2;
            continue;
        }
        let (attr, opt, val) = match (rest.get(i + 1), rest.get(i + 2)) {
            (Some(o), Some(v)) => (t, o.as_str(), v.as_str()),
            _ => return Err(format!("incomplete expression at {t:?}: expected ATTR OP VALUE")),
        };
        let (vt, opname) = match opt.split_once(':') {
            Some((ty, o)) => (Some(ty), o),
            None => (None, opt),
        };
        let cmp = match opname {
            "eq" => CmpOp::Eq,
            "ne" => CmpOp::Ne,
            "lt" => CmpOp::Lt,
            "lte" => CmpOp::Lte,
            "gt" => CmpOp::Gt,
            "gte" => CmpOp::Gte,
            _ => {
                return Err(format!(
                    "{opname:?} is not a comparison: expected eq, ne, lt, lte, gt or gte"
                ))
            }
        };
        let value_type = match vt {
            None | Some("string") => ValueType::String,
            Some("number") | Some("integer") => ValueType::Integer,
            Some(o) => return Err(format!("{o:?} is not a value type: expected string or number")),
        };
        exprs.push(Expression {
            value_type,
            ..Expression::new(attr, cmp, Some(val))
        });
        i += 3;
    }
    if exprs.is_empty() {
        return Err("rule has no expression".into());
    }
    Ok(Rule {
        score,
        boolean_op: op.unwrap_or_default(),
        expressions: exprs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::cib::config::Action;

    #[test]
    fn reads_the_seed_configuration() {
        let text = include_str!("testdata/seed_mariadb.crm");
        let cfg = parse(text).unwrap();
        assert_eq!(cfg.nodes.len(), 2);
        assert_eq!(cfg.nodes[1].name, "node2.magedu.com");
        assert!(!cfg.nodes[0].standby());
        let Some(Resource::Primitive(st)) = cfg.resource("mystor") else {
            panic!("mystor")
        };
        assert_eq!(st.agent.to_string(), "ocf:linbit:drbd");
        assert_eq!(st.ops.len(), 4);
        assert_eq!(st.ops[0].role, Some(Role::Promoted));
        assert_eq!(st.ops[0].interval_ms, 10_000);
        let Some(Resource::Clone(ms)) = cfg.resource("ms_mystor") else {
            panic!("ms")
        };
        assert!(ms.is_promotable() && ms.notify());
        assert_eq!((ms.clone_max(), ms.promoted_max()), (Some(2), 1));
        let Some(Constraint::Colocation(c)) = cfg.constraint("mydata_with_ms_mystor_master") else {
            panic!("colocation")
        };
        assert_eq!((c.score, c.with_rsc_role), (Score::INFINITY, Some(Role::Promoted)));
        let Some(Constraint::Order(o)) = cfg.constraint("mydata_after_ms_mystor_master") else {
            panic!("order")
        };
        assert_eq!(
            (o.first_action, o.then_action, o.kind),
            (Action::Promote, Action::Start, OrderKind::Mandatory)
        );
        assert!(!cfg.stonith_enabled());
        assert_eq!(
            cfg.property("cluster-infrastructure"),
            Some("classic openais (with plugin)")
        );
        assert_eq!(cfg.default_resource_stickiness(), Score::new(50));
        let status = crate::cluster::cib::Status::default();
        crate::cluster::cib::validate::validate(&cfg, &status).unwrap();
    }

    #[test]
    fn printing_reads_back_to_the_same_configuration() {
        let text = format!(
            "{}\n{}",
            include_str!("testdata/seed_mariadb.crm"),
            "location l1 mystor rule $role=Master -inf: not_defined pingd or pingd number:lte 0 \\\n\
             rule 5: #uname eq \"node 1\" and x gt y\n\
             location l2 myip role=Promoted 7: node2.magedu.com\n\
             group g a b meta target-role=Stopped\n\
             clone c g meta clone-max=2\n\
             order o2 Serialize: a b:stop symmetrical=false\n\
             rsc_defaults resource-stickiness=100\n\
             op_defaults timeout=30s\n\
             node 7: n3 attributes standby=on"
        );
        let cfg = parse(&text).unwrap();
        let printed = print(&cfg);
        let again = parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(again, cfg, "{printed}");
        assert_eq!(print(&again), printed);
        assert_eq!(cfg.node("n3").unwrap().id, 7);
        assert!(printed.contains("ms ms_mystor mystor"), "{printed}");
    }

    #[test]
    fn truncated_and_mangled_text_never_panics() {
        let seed = include_str!("testdata/seed_mariadb.crm");
        let extra = "location l r rule $role=Master -inf: a eq \"b \\\" c\" or #uname ne x\n\
                     order o 0: a:promote b symmetrical=no\nnode $id=\"7\" n\nnode 3: m\n";
        let text = format!("{seed}{extra}");
        for (i, _) in text.char_indices() {
            let _ = parse(&text[..i]);
            let _ = parse(&text[i..]);
            let mut mangled = text.clone();
            mangled.replace_range(i..i + text[i..].chars().next().map_or(0, char::len_utf8), "\"");
            let _ = parse(&mangled);
        }
    }

    #[test]
    fn older_node_forms() {
        let cfg = parse("node $id=\"1084783225\" node1 \\\n attributes standby=off\nnode node2:normal\n").unwrap();
        let names: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node1", "node2"]);
        assert!(!cfg.nodes[0].standby());
    }

    #[test]
    fn rules_scores_and_kinds() {
        let cfg = parse(
            "location l1 r rule $role=Master -inf: not_defined pingd or pingd number:lte 0 # comment\n\
             location l2 r -inf: n1\n\
             location l3 r rule 100: #uname eq n2\n\
             order o1 0: a b:stop symmetrical=false\n\
             order o2 Serialize: a b\n",
        )
        .unwrap();
        let Some(Constraint::Location(l1)) = cfg.constraint("l1") else {
            panic!()
        };
        assert_eq!(l1.role, Some(Role::Promoted));
        let LocationTarget::Rules(rules) = &l1.target else {
            panic!()
        };
        assert_eq!(rules[0].boolean_op, BoolOp::Or);
        assert_eq!(rules[0].expressions[1].value_type, ValueType::Integer);
        let Some(Constraint::Location(l3)) = cfg.constraint("l3") else {
            panic!()
        };
        let LocationTarget::Rules(rules) = &l3.target else {
            panic!()
        };
        assert_eq!(rules[0].expressions[0].attribute, "#uname");
        let Some(Constraint::Order(o1)) = cfg.constraint("o1") else {
            panic!()
        };
        assert_eq!(
            (o1.kind, o1.then_action, o1.symmetrical),
            (OrderKind::Optional, Action::Stop, Some(false))
        );
        let Some(Constraint::Order(o2)) = cfg.constraint("o2") else {
            panic!()
        };
        assert_eq!(o2.kind, OrderKind::Serialize);
    }

    #[test]
    fn fencing_topology_reads_prints_and_validates() {
        let text = "node 1: node1\nnode 2: node2\n\
                    primitive dev1 stonith:fence_ipmilan params ip=10.0.0.1 pcmk_host_list=node1\n\
                    primitive dev2 stonith:fence_apc_snmp params ip=10.0.0.9 \\\n\
                    \tpcmk_host_map=\"node1:1;node2:2\"\n\
                    primitive dev3 stonith:fence_hablock_netns params netns_prefix=hb-\n\
                    primitive dev4 stonith:fence_ipmilan params ip=10.0.0.2\n\
                    fencing_topology node1: dev1,dev2 dev3 \\\n\
                    \tnode2: dev4\n";
        let cfg = parse(text).unwrap();
        assert_eq!(
            cfg.fencing_topology,
            vec![
                FencingLevel::new("node1", 1, &["dev1", "dev2"]),
                FencingLevel::new("node1", 2, &["dev3"]),
                FencingLevel::new("node2", 1, &["dev4"]),
            ]
        );
        crate::cluster::cib::validate::validate(&cfg, &Default::default()).unwrap();
        let printed = print(&cfg);
        assert!(
            printed.contains("fencing_topology \\\n\tnode1: dev1,dev2 dev3 \\\n\tnode2: dev4\n"),
            "{printed}"
        );
        let again = parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(again, cfg, "{printed}");
        assert_eq!(print(&again), printed);

        // `hbcrm configure show`'s printer writes the same statement.
        let st = crate::cluster::cib::crmsh::fencing_topology(&cfg).unwrap();
        assert_eq!(
            (st.head.as_str(), st.clauses.clone()),
            (
                "fencing_topology",
                vec!["node1: dev1,dev2 dev3".to_string(), "node2: dev4".to_string()]
            )
        );
        assert!(crate::cluster::cib::crmsh::fencing_topology(&Configuration::default()).is_none());

        // Levels without a node apply to every node configured before them.
        let all = parse("node a\nnode b\nfencing_topology d1 d2,d3").unwrap();
        assert_eq!(
            all.fencing_topology,
            vec![
                FencingLevel::new("a", 1, &["d1"]),
                FencingLevel::new("b", 1, &["d1"]),
                FencingLevel::new("a", 2, &["d2", "d3"]),
                FencingLevel::new("b", 2, &["d2", "d3"]),
            ]
        );
        // ... and print per node, which reads back the same.
        assert_eq!(
            parse(&print(&all)).unwrap().fencing_levels("b"),
            all.fencing_levels("b")
        );

        for bad in [
            "fencing_topology",
            "fencing_topology n1:",
            "fencing_topology d1",
            "node n1\nfencing_topology n1: d1 n1: d2",
            "node n1\nfencing_topology n1: d1,,d2",
            "node n1\nfencing_topology attr:rack=1: d1",
            "node n1\nfencing_topology n1: d1\nfencing_topology n1: d2",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }

        // Validation: devices must be configured stonith primitives, targets configured nodes.
        let mut broken = cfg.clone();
        broken.fencing_topology.push(FencingLevel::new("node2", 2, &["nosuch"]));
        broken.fencing_topology.push(FencingLevel::new("ghost", 1, &["dev1"]));
        broken.fencing_topology.push(FencingLevel::new("node2", 1, &["dev1"]));
        broken
            .fencing_topology
            .push(FencingLevel::new("node1", 10, &["dev1", "dev1"]));
        broken
            .resources
            .push(Primitive::new("dummy", "ocf:heartbeat:Dummy").unwrap().into());
        broken.fencing_topology.push(FencingLevel::new("node2", 3, &["dummy"]));
        let errs = crate::cluster::cib::validate::validate(&broken, &Default::default()).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all_text = text.join("\n");
        for want in [
            "fencing level 2 of \"node2\" names resource \"nosuch\", which is not configured",
            "fencing level 1 of \"ghost\" names node \"ghost\", which is not configured",
            "fencing level 1 of node \"node2\": the node has two levels with this index",
            "fencing level 10 of node \"node1\": the index must be 1 to 9",
            "fencing level 10 of node \"node1\": device \"dev1\" is listed twice",
            "fencing level 3 of node \"node2\": device \"dummy\" runs ocf:heartbeat:Dummy",
        ] {
            assert!(all_text.contains(want), "missing {want:?} in\n{all_text}");
        }
    }

    #[test]
    fn bad_input_is_an_error_with_a_line() {
        for (text, line) in [
            ("primitive a Dummy\nprimitive a Dummy", 2),
            ("\n\nprimitive", 3),
            ("primitive a nope:x", 1),
            ("colocation c inf: a", 1),
            ("order o inf: a b c", 1),
            ("location l a rule 5: x eq", 1),
            ("location l a rule 5: x like y", 1),
            ("colocation c inf: ( a b ) c", 1),
            ("frobnicate x", 1),
            ("primitive a Dummy params x=\"1", 1),
            ("primitive a Dummy op", 1),
            ("primitive a Dummy op monitor interval=xx", 1),
            ("group g", 1),
            ("ms m a b", 1),
            ("node", 1),
            ("node $id=\"x\"", 1),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }
}
