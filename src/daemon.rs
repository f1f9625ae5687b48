//! The node daemon: runs this node's resources and answers the admin socket.

use crate::cluster::crmd::controller::Controller;
use crate::cluster::driver::ClusterDriver;
use crate::config::ClusterConfig;
use crate::control::{exit, NodeStatus, Request, Response, MAX_REQUEST};
use crate::iscsi::target::{IscsiAdmin, TgtReply, TgtRequest};
use crate::resource::{OpError, Resource};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Everything one node runs.
pub struct Node {
    pub name: String,
    pub config: ClusterConfig,
    resources: Vec<Arc<Resource>>,
    cluster: Option<Arc<ClusterDriver>>,
    controller: Option<Arc<Controller>>,
    /// The iSCSI target registry, or why it could not be loaded.
    iscsi: Result<Arc<IscsiAdmin>, String>,
}

impl Node {
    pub fn new(config: ClusterConfig, name: &str) -> Node {
        let resources = config
            .resources
            .iter()
            .filter_map(|r| Resource::new(r, name))
            .map(Arc::new)
            .collect();
        let iscsi = IscsiAdmin::load(&config, name).map(Arc::new);
        if let Err(e) = &iscsi {
            tracing::error!("iSCSI targets not loaded: {e}");
        }
        Node {
            name: name.to_string(),
            config,
            resources,
            cluster: None,
            controller: None,
            iscsi,
        }
    }

    /// Attaches the running membership driver (answers `cluster-status`).
    pub fn with_cluster(mut self, driver: Arc<ClusterDriver>) -> Node {
        self.cluster = Some(driver);
        self
    }

    /// Attaches the resource manager's controller (its state shows in `cluster-status`).
    pub fn with_controller(mut self, controller: Arc<Controller>) -> Node {
        self.controller = Some(controller);
        self
    }

    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.controller.as_ref()
    }

    /// The membership driver, when this node is in a `[cluster]` section.
    pub fn cluster(&self) -> Option<&Arc<ClusterDriver>> {
        self.cluster.as_ref()
    }

    /// The resources a request names ("all" means every one of this node's).
    fn select(&self, which: &str) -> Result<Vec<Arc<Resource>>, Response> {
        if which == "all" {
            return Ok(self.resources.clone());
        }
        match self.resources.iter().find(|r| r.name() == which) {
            Some(r) => Ok(vec![r.clone()]),
            None => Err(Response::err(
                exit::NO_SUCH_RESOURCE,
                format!(
                    "{which}: no such resource on node {} (check [[resource]] and [resource.on.{}] in {})",
                    self.name,
                    self.name,
                    self.config.path.display()
                ),
            )),
        }
    }

    /// Brings every resource up, as an init script's `drbdadm up all` would; failures are
    /// logged and shown in status, and do not stop the others.
    pub async fn up_all(&self) {
        for r in &self.resources {
            match r.up().await {
                Ok(m) => tracing::info!("{m}"),
                Err(e) => tracing::error!("{}", e.message),
            }
        }
    }

    /// Stops every resource cleanly (flushes, persists bitmaps, marks a clean stop).
    pub async fn down_all(&self) {
        for r in &self.resources {
            match r.down(true).await {
                Ok(m) => tracing::info!("{m}"),
                Err(e) => tracing::error!("{}", e.message),
            }
        }
    }

    /// This node's resources (the iSCSI server serves `--bstype hablock` LUNs from them).
    pub fn resources(&self) -> &[Arc<Resource>] {
        &self.resources
    }

    /// The iSCSI target registry (what the iSCSI server asks at login), when it loaded.
    pub fn iscsi(&self) -> Option<&Arc<IscsiAdmin>> {
        self.iscsi.as_ref().ok()
    }

    /// Carries out one admin request.
    pub async fn handle(&self, req: &Request) -> Response {
        if req.cmd == "tgtadm" {
            let reply = match (&self.iscsi, req.tgt.clone().map(serde_json::from_value::<TgtRequest>)) {
                (Err(e), _) => TgtReply {
                    code: 1,
                    stdout: String::new(),
                    stderr: format!("tgtadm: the iSCSI targets of this node could not be loaded: {e}\n"),
                },
                // Off the async workers: a change is fsynced before the answer.
                (Ok(admin), Some(Ok(tgt))) => {
                    let admin = admin.clone();
                    tokio::task::spawn_blocking(move || admin.handle(tgt))
                        .await
                        .unwrap_or_else(|e| TgtReply {
                            code: 1,
                            stdout: String::new(),
                            stderr: format!("tgtadm: internal error: {e}\n"),
                        })
                }
                (Ok(_), bad) => TgtReply {
                    code: 22,
                    stdout: String::new(),
                    stderr: format!("tgtadm: malformed tgtadm request: {:?}\n", bad.and_then(|r| r.err())),
                },
            };
            let mut resp = Response::ok(Vec::new());
            resp.tgt = Some(Box::new(reply));
            return resp;
        }
        if req.cmd == "cluster-status" {
            return match &self.cluster {
                Some(d) => {
                    let mut resp = Response::ok(Vec::new());
                    let mut st = d.status_json();
                    if let (Some(c), Some(o)) = (&self.controller, st.as_object_mut()) {
                        o.insert("controller".into(), c.status_json());
                    }
                    resp.cluster = Some(Box::new(st));
                    resp
                }
                None => Response::err(
                    exit::FAILED,
                    format!(
                        "node {} runs no cluster membership: {} has no [cluster] section naming it",
                        self.name,
                        self.config.path.display()
                    ),
                ),
            };
        }
        if req.cmd == "cib-show" || req.cmd == "cib-change" {
            return self.handle_cib(req).await;
        }
        let targets = match self.select(&req.resource) {
            Ok(t) => t,
            Err(resp) => return resp,
        };
        if req.cmd == "status" {
            let mut resources = Vec::new();
            for r in &targets {
                resources.push(r.status().await);
            }
            let mut resp = Response::ok(Vec::new());
            resp.status = Some(NodeStatus {
                node: self.name.clone(),
                resources,
            });
            return resp;
        }
        let mut messages = Vec::new();
        let mut first_err: Option<OpError> = None;
        for r in &targets {
            let res = match req.cmd.as_str() {
                "up" => r.up().await,
                "down" => r.down(req.force).await,
                "attach" => r.attach().await,
                "detach" => r.detach(req.force).await,
                "primary" => r.primary(req.force).await,
                "secondary" => r.secondary(req.force).await,
                // `force` carries --discard-my-data.
                "connect" => r.connect(req.force).await,
                "disconnect" => r.disconnect().await,
                other => {
                    return Response::err(
                        exit::FAILED,
                        format!(
                        "unknown command {other:?}; expected up, down, attach, detach, primary, secondary, connect, disconnect, status or cluster-status"
                    ),
                    )
                }
            };
            match res {
                Ok(m) => messages.push(m),
                Err(e) => {
                    messages.push(e.message.clone());
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => Response::ok(messages),
            Some(e) => {
                let mut resp = Response::err(e.code, e.message);
                resp.messages = messages;
                resp
            }
        }
    }
}

impl Node {
    /// `cib-show` (the document) and `cib-change` (operations through the DC).
    async fn handle_cib(&self, req: &Request) -> Response {
        let Some(d) = &self.cluster else {
            return Response::err(
                exit::FAILED,
                format!(
                    "node {} runs no cluster membership, so it holds no CIB: {} has no [cluster] section naming it",
                    self.name,
                    self.config.path.display()
                ),
            );
        };
        if req.cmd == "cib-show" {
            let mut resp = Response::ok(Vec::new());
            resp.cluster = Some(Box::new(d.cib_json()));
            return resp;
        }
        let ops: Vec<crate::cluster::cib::CibOp> = match req.cib_ops.clone().map(serde_json::from_value) {
            Some(Ok(ops)) => ops,
            Some(Err(e)) => return Response::err(exit::FAILED, format!("malformed CIB operations: {e}")),
            None => return Response::err(exit::FAILED, "cib-change needs cib_ops"),
        };
        if ops.is_empty() {
            return Response::err(exit::FAILED, "cib-change needs at least one operation");
        }
        match d.change(ops, req.force).await {
            Ok(done) => {
                let what = match (done.changed, done.forced) {
                    (false, _) => format!("CIB unchanged at version {}", done.version),
                    (true, false) => format!("CIB updated to version {}", done.version),
                    (true, true) => format!(
                        "CIB of this node only updated to version {} WITHOUT quorum",
                        done.version
                    ),
                };
                let mut resp = Response::ok(vec![what]);
                resp.cluster = Some(Box::new(serde_json::to_value(done).unwrap_or_default()));
                resp
            }
            Err(e) => {
                use crate::cluster::cib::replica::ChangeError;
                let code = match e {
                    ChangeError::NoQuorum | ChangeError::Refused(_) => exit::REFUSED,
                    ChangeError::Timeout | ChangeError::Busy => exit::FAILED,
                };
                Response::err(code, e.to_string())
            }
        }
    }
}

/// Binds the admin socket, refusing to steal one a live daemon still answers on.
pub fn bind_control(path: &PathBuf) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another hablockd already answers on {}; stop it first", path.display());
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path).map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))
}

/// Answers admin connections until the task is dropped.
pub async fn serve_control(node: Arc<Node>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(node, stream).await {
                        tracing::debug!("admin connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("admin socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer(node: Arc<Node>, stream: UnixStream) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(rd).take(MAX_REQUEST as u64);
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await;
    let resp = match read {
        Err(_) => Response::err(exit::FAILED, "request timed out"),
        Ok(Err(e)) => Response::err(exit::FAILED, format!("unreadable request: {e}")),
        Ok(Ok(_)) if !line.ends_with('\n') => Response::err(exit::FAILED, "request too long or not newline-terminated"),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                tracing::debug!(?req, "admin request");
                node.handle(&req).await
            }
            Err(e) => Response::err(exit::FAILED, format!("malformed request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    wr.write_all(&out).await?;
    wr.shutdown().await
}
