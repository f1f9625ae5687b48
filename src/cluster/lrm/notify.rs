//! Pure: the clone notification variables an agent's `notify` action reads (Pacemaker Explained,
//! "Clone Resource Agent Requirements" / "Clone Notifications"). The controller computes who is
//! starting, stopping, promoted, ...; this formats it for [`super::OpRequest::extra_env`].

use crate::cluster::cib::config::Action;

/// Before or after the operation the notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyType {
    Pre,
    Post,
}

impl NotifyType {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyType::Pre => "pre",
            NotifyType::Post => "post",
        }
    }
}

/// One clone instance on one node: `("p_drbd:0", "node1")`.
pub type Instance = (String, String);

/// What a notification says. Each list is of clone instances and the nodes they are on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub kind: NotifyType,
    /// `start`, `stop`, `promote` or `demote`.
    pub operation: Action,
    pub start: Vec<Instance>,
    pub stop: Vec<Instance>,
    pub promote: Vec<Instance>,
    pub demote: Vec<Instance>,
    /// Instances running now (any role).
    pub active: Vec<Instance>,
    /// Instances not running (their node is empty).
    pub inactive: Vec<Instance>,
    /// Instances in the promoted role.
    pub promoted: Vec<Instance>,
    /// Instances in the unpromoted role.
    pub unpromoted: Vec<Instance>,
    /// Nodes that could run an instance.
    pub available_nodes: Vec<String>,
    /// Every node of the cluster.
    pub all_nodes: Vec<String>,
}

fn var(name: &str) -> String {
    format!("OCF_RESKEY_CRM_meta_notify_{name}")
}

/// The environment for `n`: `OCF_RESKEY_CRM_meta_notify_type`, `_operation`, and for each list
/// `_LIST_resource` and `_LIST_uname` (space-separated, in the same order). The promoted and
/// unpromoted lists are given under their Pacemaker 2.1 names and the older `master`/`slave`
/// names that agents written for Pacemaker 1 (ocf:linbit:drbd, mysql) read.
pub fn notify_env(n: &Notification) -> Vec<(String, String)> {
    let mut env = vec![
        (var("type"), n.kind.as_str().to_string()),
        (var("operation"), n.operation.as_str().to_string()),
    ];
    let mut list = |name: &str, items: &[Instance]| {
        let rscs: Vec<&str> = items.iter().map(|(r, _)| r.as_str()).collect();
        // An instance that runs nowhere (a unique clone's inactive one) has no node to list.
        let nodes: Vec<&str> = items
            .iter()
            .map(|(_, u)| u.as_str())
            .filter(|u| !u.is_empty())
            .collect();
        env.push((var(&format!("{name}_resource")), rscs.join(" ")));
        env.push((var(&format!("{name}_uname")), nodes.join(" ")));
    };
    list("start", &n.start);
    list("stop", &n.stop);
    list("promote", &n.promote);
    list("demote", &n.demote);
    list("active", &n.active);
    list("inactive", &n.inactive);
    list("promoted", &n.promoted);
    list("master", &n.promoted);
    list("unpromoted", &n.unpromoted);
    list("slave", &n.unpromoted);
    env.push((var("available_uname"), n.available_nodes.join(" ")));
    env.push((var("all_uname"), n.all_nodes.join(" ")));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(r: &str, n: &str) -> Instance {
        (r.to_string(), n.to_string())
    }

    #[test]
    fn promote_notification() {
        let n = Notification {
            kind: NotifyType::Pre,
            operation: Action::Promote,
            start: vec![],
            stop: vec![],
            promote: vec![i("d:1", "b")],
            demote: vec![],
            active: vec![i("d:0", "a"), i("d:1", "b")],
            inactive: vec![],
            promoted: vec![],
            unpromoted: vec![i("d:0", "a"), i("d:1", "b")],
            available_nodes: vec!["a".into(), "b".into()],
            all_nodes: vec!["a".into(), "b".into(), "c".into()],
        };
        let env = notify_env(&n);
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == &format!("OCF_RESKEY_CRM_meta_notify_{k}"))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("type"), Some("pre"));
        assert_eq!(get("operation"), Some("promote"));
        assert_eq!(get("promote_resource"), Some("d:1"));
        assert_eq!(get("promote_uname"), Some("b"));
        assert_eq!(get("active_resource"), Some("d:0 d:1"));
        assert_eq!(get("active_uname"), Some("a b"));
        assert_eq!(get("slave_uname"), get("unpromoted_uname"));
        assert_eq!(get("master_uname"), Some(""));
        assert_eq!(get("all_uname"), Some("a b c"));
        assert_eq!(get("start_resource"), Some(""));
        let mut names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        let len = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), len, "no variable twice");
    }
}
