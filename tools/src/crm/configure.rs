//! `hbcrm configure`: crm shell text turned into the CIB operations that make the current
//! configuration say what the text says.

use hablock::cluster::cib::config::{Attrs, Configuration, Resource};
use hablock::cluster::cib::{CibOp, Status};
use hablock::cluster::pengine::crm_syntax;
use hablock::cluster::pengine::state;

/// The words `configure` accepts as object definitions on the command line.
pub const OBJECT_WORDS: &[&str] = &[
    "primitive",
    "group",
    "clone",
    "ms",
    "master",
    "promotable",
    "location",
    "colocation",
    "collocation",
    "order",
    "property",
    "rsc_defaults",
    "op_defaults",
];

/// Joins command-line words back into one crm line. The shell has already removed the user's
/// quotes, so a word with blanks, quotes, `#` or backslashes is quoted again (escaping `"` and
/// `\`), which the crm reader turns back into the same word.
pub fn join_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty() && !w.contains(|c: char| c.is_whitespace() || "\"\\#".contains(c)) {
                return w.clone();
            }
            let mut q = String::from("\"");
            for c in w.chars() {
                if c == '"' || c == '\\' {
                    q.push('\\');
                }
                q.push(c);
            }
            q.push('"');
            q
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse(text: &str) -> Result<Configuration, String> {
    crm_syntax::parse(text).map_err(|e| e.to_string())
}

/// Operations setting each `name=value` of `attrs` (an empty value deletes the option, as
/// `crm configure property name=` does).
fn option_ops(word: &str, attrs: &Attrs) -> Vec<CibOp> {
    attrs
        .iter()
        .map(|(k, v)| {
            let name = k.clone();
            let value = (!v.is_empty()).then(|| v.clone());
            match word {
                "property" => CibOp::SetProperty { name, value },
                "rsc_defaults" => CibOp::SetRscDefault { name, value },
                _ => CibOp::SetOpDefault { name, value },
            }
        })
        .collect()
}

/// `configure primitive|group|clone|ms|promotable|location|colocation|order|property|
/// rsc_defaults|op_defaults ...`: one crm statement (as words) added to `cur`. Fails, naming
/// the id, when a resource or constraint of that id exists already (crm's "object exists").
pub fn add_ops(cur: &Configuration, words: &[String]) -> Result<Vec<CibOp>, String> {
    let Some(first) = words.first() else {
        return Err("nothing to add: expected e.g. `primitive ID AGENT params ...`".into());
    };
    if !OBJECT_WORDS.contains(&first.as_str()) {
        return Err(format!(
            "{first:?} is not a configure statement: expected one of {}",
            OBJECT_WORDS.join(", ")
        ));
    }
    let frag = parse(&join_words(words))?;
    let mut ops = Vec::new();
    for (word, attrs) in [
        ("property", &frag.properties),
        ("rsc_defaults", &frag.rsc_defaults),
        ("op_defaults", &frag.op_defaults),
    ] {
        ops.extend(option_ops(word, attrs));
    }
    if matches!(first.as_str(), "property" | "rsc_defaults" | "op_defaults") && ops.is_empty() {
        return Err(format!("{first} needs NAME=VALUE"));
    }
    for r in &frag.resources {
        if cur.resource(r.id()).is_some() || cur.constraint(r.id()).is_some() {
            return Err(format!(
                "object {} already exists (delete it first, or use `configure load update`)",
                r.id()
            ));
        }
        ops.push(CibOp::AddResource { resource: r.clone() });
    }
    for c in &frag.constraints {
        if cur.resource(c.id()).is_some() || cur.constraint(c.id()).is_some() {
            return Err(format!(
                "object {} already exists (delete it first, or use `configure load update`)",
                c.id()
            ));
        }
        ops.push(CibOp::AddConstraint { constraint: c.clone() });
    }
    Ok(ops)
}

/// How `configure load` combines the file with the current configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Add what the file names that is missing, replace what differs, keep everything else.
    Update,
    /// The configuration becomes the file's: resources, constraints, options and the
    /// attributes of the nodes it names. Nodes are the cluster file's and are never removed.
    Replace,
}

impl std::str::FromStr for LoadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<LoadMode, String> {
        match s {
            "update" => Ok(LoadMode::Update),
            "replace" => Ok(LoadMode::Replace),
            _ => Err(format!("{s:?}: expected update or replace")),
        }
    }
}

fn attr_diff(cur: &Attrs, new: &Attrs, replace: bool, mut op: impl FnMut(&str, Option<String>)) {
    for (k, v) in new {
        if cur.get(k) != Some(v) {
            op(k, Some(v.clone()));
        }
    }
    if replace {
        for k in cur.keys() {
            if !new.contains_key(k) {
                op(k, None);
            }
        }
    }
}

/// `configure load update|replace`: the operations that make `cur` say what `text` says, in an
/// order the DC can apply one by one (constraints that go are deleted before the resources they
/// name; resources that go are deleted clones first, then groups, then primitives). Nodes in
/// the text must be configured already (they come from the cluster file); they are matched by
/// name, their ids in the text are ignored. Nothing to change gives no operations.
pub fn load_ops(cur: &Configuration, text: &str, mode: LoadMode) -> Result<Vec<CibOp>, String> {
    let new = parse(text)?;
    let replace = mode == LoadMode::Replace;
    let mut ops = Vec::new();
    for n in &new.nodes {
        let Some(have) = cur.node(&n.name) else {
            return Err(format!(
                "node {} is not a node of this cluster (nodes come from the cluster file's [cluster] nodes; configured: {})",
                n.name,
                cur.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        };
        attr_diff(&have.attributes, &n.attributes, replace, |k, v| {
            ops.push(CibOp::SetNodeAttribute {
                node: n.name.clone(),
                name: k.to_string(),
                value: v,
            })
        });
    }
    if replace {
        for c in &cur.constraints {
            if new.constraint(c.id()).is_none() {
                ops.push(CibOp::DeleteConstraint { id: c.id().to_string() });
            }
        }
    }
    for r in &new.resources {
        if cur.constraint(r.id()).is_some() && new.constraint(r.id()).is_none() && !replace {
            return Err(format!(
                "object {} is a constraint here; the file makes it a resource",
                r.id()
            ));
        }
        match cur.resource(r.id()) {
            Some(old) if old == r => {}
            Some(_) => ops.push(CibOp::ReplaceResource { resource: r.clone() }),
            None => ops.push(CibOp::AddResource { resource: r.clone() }),
        }
    }
    for c in &new.constraints {
        if cur.resource(c.id()).is_some() && new.resource(c.id()).is_none() && !replace {
            return Err(format!(
                "object {} is a resource here; the file makes it a constraint",
                c.id()
            ));
        }
        match cur.constraint(c.id()) {
            Some(old) if old == c => {}
            Some(_) => ops.push(CibOp::ReplaceConstraint { constraint: c.clone() }),
            None => ops.push(CibOp::AddConstraint { constraint: c.clone() }),
        }
    }
    if replace {
        ops.extend(delete_resources_in_order(
            cur,
            cur.resources
                .iter()
                .map(|r| r.id())
                .filter(|id| new.resource(id).is_none()),
            false,
        ));
    }
    let mut opt = |word: &str, cur: &Attrs, new: &Attrs| {
        attr_diff(cur, new, replace, |k, v| {
            let name = k.to_string();
            ops.push(match word {
                "property" => CibOp::SetProperty { name, value: v },
                "rsc_defaults" => CibOp::SetRscDefault { name, value: v },
                _ => CibOp::SetOpDefault { name, value: v },
            })
        })
    };
    opt("property", &cur.properties, &new.properties);
    opt("rsc_defaults", &cur.rsc_defaults, &new.rsc_defaults);
    opt("op_defaults", &cur.op_defaults, &new.op_defaults);
    Ok(ops)
}

/// `DeleteResource` for each id, clones before groups before primitives, so that each delete
/// finds its container already gone.
fn delete_resources_in_order<'a>(cur: &Configuration, ids: impl Iterator<Item = &'a str>, cascade: bool) -> Vec<CibOp> {
    let ids: Vec<&str> = ids.collect();
    let rank = |id: &str| match cur.resource(id) {
        Some(Resource::Clone(_)) => 0,
        Some(Resource::Group(_)) => 1,
        _ => 2,
    };
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| rank(id));
    sorted
        .into_iter()
        .map(|id| CibOp::DeleteResource {
            id: id.to_string(),
            cascade,
        })
        .collect()
}

/// `configure delete [--force] ID...`: constraints, then resources (clones, groups,
/// primitives). Without `force` a resource that is active somewhere (its history says so) is
/// refused, as crm refuses to delete a running resource, and one still used by a group, clone
/// or constraint not being deleted fails at the DC; with `force` those uses go too.
pub fn delete_ops(cur: &Configuration, status: &Status, ids: &[String], force: bool) -> Result<Vec<CibOp>, String> {
    let mut ops = Vec::new();
    let mut rscs = Vec::new();
    for id in ids {
        if cur.constraint(id).is_some() {
            ops.push(CibOp::DeleteConstraint { id: id.clone() });
        } else if cur.resource(id).is_some() {
            if !force {
                let running = running_nodes(cur, status, id);
                if !running.is_empty() {
                    return Err(format!(
                        "resource {id} is running on {}; stop it first (`hbcrm resource stop {id}`) or use --force",
                        running.join(", ")
                    ));
                }
            }
            rscs.push(id.as_str());
        } else if cur.node(id).is_some() {
            return Err(format!(
                "{id} is a node: nodes come from the cluster file and are not deleted with configure delete"
            ));
        } else {
            return Err(format!("object {id} does not exist"));
        }
    }
    ops.extend(delete_resources_in_order(cur, rscs.into_iter(), force));
    Ok(ops)
}

/// The nodes on which any primitive of `id` is active according to the status section.
pub fn running_nodes(cur: &Configuration, status: &Status, id: &str) -> Vec<String> {
    let prims: Vec<&str> = cur.primitives_of(id).iter().map(|p| p.id.as_str()).collect();
    let mut out = Vec::new();
    for (node, ns) in &status.nodes {
        let active = ns
            .resources
            .iter()
            .any(|(sid, h)| prims.contains(&state::base_id(sid)) && state::observe(h).is_active());
        if active {
            out.push(node.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hablock::cluster::cib::config::Node;
    use hablock::cluster::cib::Cib;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    /// The seed's block with only node names, addresses and paths changed.
    pub(crate) fn seed() -> String {
        let text = include_str!("../../../src/cluster/pengine/testdata/seed_mariadb.crm");
        text.replace("node1.magedu.com", "alpha")
            .replace("node2.magedu.com", "beta")
            .replace("172.16.100.27", "10.99.0.27")
            .replace("/mydata", "/srv/mydata")
    }

    pub(crate) fn cluster() -> Cib {
        let mut cfg = Configuration::default();
        for (i, n) in ["alpha", "beta", "gamma"].iter().enumerate() {
            cfg.nodes.push(Node::new(n, i as u8));
        }
        Cib::with_configuration(cfg).unwrap()
    }

    fn applied(cib: &Cib, ops: &[CibOp]) -> Cib {
        let mut c = cib.clone();
        c.apply(ops).unwrap_or_else(|e| panic!("{e}: {ops:?}"));
        c
    }

    #[test]
    fn joined_words_read_back_as_the_same_words() {
        let w = vec![
            "primitive".to_string(),
            "p".into(),
            "Dummy".into(),
            "params".into(),
            "fake=a b \"c\" \\d #e".into(),
        ];
        let cfg = crm_syntax::parse(&join_words(&w)).unwrap();
        let Some(Resource::Primitive(p)) = cfg.resource("p") else {
            panic!()
        };
        assert_eq!(p.params["fake"], "a b \"c\" \\d #e");
    }

    #[test]
    fn add_refuses_taken_ids_and_other_words() {
        let cib = cluster();
        let ops = add_ops(&cib.configuration, &words("primitive d Dummy op monitor interval=10s")).unwrap();
        assert!(matches!(&ops[..], [CibOp::AddResource { .. }]));
        let cib = applied(&cib, &ops);
        let e = add_ops(&cib.configuration, &words("primitive d Dummy")).unwrap_err();
        assert!(e.contains("object d already exists"), "{e}");
        let e = add_ops(&cib.configuration, &words("location d d 100: alpha")).unwrap_err();
        assert!(e.contains("already exists"), "{e}");
        let ops = add_ops(&cib.configuration, &words("location l_d d 100: alpha")).unwrap();
        assert!(matches!(&ops[..], [CibOp::AddConstraint { .. }]));
        assert!(add_ops(&cib.configuration, &words("node delta")).is_err());
        assert!(add_ops(&cib.configuration, &words("property")).is_err());
        assert!(add_ops(&cib.configuration, &words("primitive x nope:y")).is_err());
        let ops = add_ops(
            &cib.configuration,
            &words("property cib-bootstrap-options: stonith-enabled=false no-quorum-policy="),
        )
        .unwrap();
        assert_eq!(
            ops,
            vec![
                CibOp::SetProperty {
                    name: "no-quorum-policy".into(),
                    value: None
                },
                CibOp::SetProperty {
                    name: "stonith-enabled".into(),
                    value: Some("false".into())
                },
            ]
        );
    }

    #[test]
    fn load_update_of_the_seed_then_again_is_a_no_op() {
        let cib = cluster();
        let ops = load_ops(&cib.configuration, &seed(), LoadMode::Update).unwrap();
        let after = applied(&cib, &ops);
        let cfg = &after.configuration;
        assert_eq!(cfg.resources.len(), 5);
        assert_eq!(cfg.constraints.len(), 6);
        assert_eq!(cfg.node("alpha").unwrap().attributes["standby"], "off");
        // Node ids stay the cluster's; gamma, not in the file, is untouched.
        assert_eq!(cfg.node("beta").unwrap().id, 1);
        assert!(cfg.node("gamma").is_some());
        assert_eq!(cfg.property("no-quorum-policy"), Some("ignore"));
        assert!(load_ops(cfg, &seed(), LoadMode::Update).unwrap().is_empty());
        // What `show` prints loads back to nothing to do.
        let shown = hablock::cluster::cib::crmsh::show(cfg);
        assert!(load_ops(cfg, &shown, LoadMode::Replace).unwrap().is_empty(), "{shown}");
    }

    #[test]
    fn load_update_replaces_what_differs_and_keeps_the_rest() {
        let cib = applied(
            &cluster(),
            &load_ops(&cluster().configuration, &seed(), LoadMode::Update).unwrap(),
        );
        let text = "primitive myip IPaddr params ip=10.99.0.28 op monitor interval=10s timeout=20s\n\
                    primitive extra Dummy\n\
                    location l_extra extra 10: gamma\n\
                    property stonith-enabled=true\n";
        let ops = load_ops(&cib.configuration, text, LoadMode::Update).unwrap();
        assert_eq!(ops.len(), 4, "{ops:?}");
        assert!(matches!(&ops[0], CibOp::ReplaceResource { resource } if resource.id() == "myip"));
        let after = applied(&cib, &ops);
        assert_eq!(after.configuration.resources.len(), 6);
        assert!(after.configuration.constraint("myserver_after_myip").is_some());
        assert!(after.configuration.stonith_enabled());
    }

    #[test]
    fn load_replace_makes_the_configuration_the_files() {
        let cib = applied(
            &cluster(),
            &load_ops(&cluster().configuration, &seed(), LoadMode::Update).unwrap(),
        );
        let text = "node beta\n\
                    primitive mystor ocf:linbit:drbd params drbd_resource=mystore\n\
                    ms ms_mystor mystor meta notify=true\n\
                    primitive web Dummy\n\
                    colocation web_with_master inf: web ms_mystor:Master\n\
                    property stonith-enabled=false\n";
        let ops = load_ops(&cib.configuration, text, LoadMode::Replace).unwrap();
        let after = applied(&cib, &ops);
        let cfg = &after.configuration;
        let ids: Vec<&str> = cfg.resources.iter().map(|r| r.id()).collect();
        assert_eq!(ids, ["mystor", "ms_mystor", "web"]);
        let cids: Vec<&str> = cfg.constraints.iter().map(|c| c.id()).collect();
        assert_eq!(cids, ["web_with_master"]);
        assert_eq!(cfg.properties.len(), 1);
        // beta is named without attributes: its standby=off goes; alpha is not named: kept.
        assert!(cfg.node("beta").unwrap().attributes.is_empty());
        assert_eq!(cfg.node("alpha").unwrap().attributes["standby"], "off");
        // A replace naming a node the cluster does not have is refused.
        let e = load_ops(cfg, "node delta\n", LoadMode::Replace).unwrap_err();
        assert!(e.contains("delta") && e.contains("cluster file"), "{e}");
        // Bad text: the line is named.
        let e = load_ops(cfg, "primitive a Dummy\nprimitive\n", LoadMode::Update).unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
    }

    #[test]
    fn delete_orders_and_refuses_running_resources() {
        use hablock::cluster::cib::config::Action;
        use hablock::cluster::cib::status::OpRecord;
        let cib = applied(
            &cluster(),
            &load_ops(&cluster().configuration, &seed(), LoadMode::Update).unwrap(),
        );
        let ids: Vec<String> = words("mystor ms_mystor mydata_with_ms_mystor_master");
        let ops = delete_ops(&cib.configuration, &cib.status, &ids, false).unwrap();
        assert_eq!(
            ops,
            vec![
                CibOp::DeleteConstraint {
                    id: "mydata_with_ms_mystor_master".into()
                },
                CibOp::DeleteResource {
                    id: "ms_mystor".into(),
                    cascade: false
                },
                CibOp::DeleteResource {
                    id: "mystor".into(),
                    cascade: false
                },
            ]
        );
        // Still named by the order constraint: the DC refuses without --force.
        assert!(crate::crm::precheck(&cib, &ops).is_err());
        let forced = delete_ops(&cib.configuration, &cib.status, &ids, true).unwrap();
        let after = applied(&cib, &forced);
        assert!(after.configuration.resource("mystor").is_none());
        assert!(after
            .configuration
            .constraint("mydata_after_ms_mystor_master")
            .is_none());
        // A running resource is refused without --force.
        let running = applied(
            &cib,
            &[CibOp::RecordOperation {
                node: "alpha".into(),
                rsc: "myip".into(),
                agent: "ocf:heartbeat:IPaddr".into(),
                record: OpRecord::done(Action::Start, 0, 1, 0),
            }],
        );
        let e = delete_ops(&running.configuration, &running.status, &words("myip"), false).unwrap_err();
        assert!(e.contains("running on alpha"), "{e}");
        assert!(delete_ops(&cib.configuration, &cib.status, &words("nope"), false).is_err());
        assert!(delete_ops(&cib.configuration, &cib.status, &words("alpha"), false).is_err());
    }
}
