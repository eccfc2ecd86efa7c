//! The test double for the root helper, shared by the unit tests of the service and
//! of the API: a real store (SQLite in a temporary directory) and a recording fake
//! behind [`Helper`], so the lifecycle's rules and the API's mapping run without root.

use super::*;

/// The fake's answer to a request, in its wire form.
pub(crate) type Answer = dyn Fn(&Request) -> std::result::Result<Reply, ClientError> + Send + Sync;

/// Records every request; answers with `answer`.
pub(crate) struct Fake {
    seen: Arc<Mutex<Vec<Request>>>,
    answer: Box<Answer>,
}

impl Helper for Fake {
    fn exchange(&self, req: &Request) -> std::result::Result<Reply, ClientError> {
        self.seen.lock().unwrap().push(req.clone());
        (self.answer)(req)
    }
}

pub(crate) struct T {
    pub(crate) svc: Service,
    pub(crate) seen: Arc<Mutex<Vec<Request>>>,
    pub(crate) _dir: tempfile::TempDir,
}

impl T {
    /// Request kinds the helper was asked for, in order (`op` of the wire form).
    pub(crate) fn ops(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                serde_json::to_value(r).unwrap()["op"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
    pub(crate) fn state(&self, name: &str) -> VmRecord {
        self.svc.store.get_by_name(name).unwrap().unwrap()
    }
}

pub(crate) fn service(
    answer: impl Fn(&Request) -> std::result::Result<Reply, ClientError> + Send + Sync + 'static,
) -> T {
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::under(dir.path());
    std::fs::create_dir_all(&dirs.run).unwrap();
    let store = Store::open(&dir.path().join("banger.db")).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fake = Fake {
        seen: seen.clone(),
        answer: Box::new(answer),
    };
    T {
        svc: Service::new(dirs, store, fake),
        seen,
        _dir: dir,
    }
}

pub(crate) fn spec(name: &str) -> VmSpec {
    serde_json::from_value(serde_json::json!({"name": name, "kernel": "/k"})).unwrap()
}

/// A VM recorded as running with `pid` as its VMM, its run directory in place.
pub(crate) fn running(t: &T, name: &str, id: &str, pid: i32, start_time: u64) -> VmRecord {
    running_in(&t.svc, name, id, pid, start_time)
}

/// [`running`] in any service.
pub(crate) fn running_in(
    svc: &Service,
    name: &str,
    id: &str,
    pid: i32,
    start_time: u64,
) -> VmRecord {
    let rec = svc.store.insert(id, &spec(name), (0, 0)).unwrap();
    svc.store
        .set_state(id, StateUpdate::to(VmState::Starting))
        .unwrap();
    let up = StateUpdate::to(VmState::Running)
        .vmm(Some("banger-vmm-qemu"))
        .process(Some((pid, start_time)));
    svc.store.set_state(id, up).unwrap();
    std::fs::create_dir_all(svc.dirs.vm_run_dir(&rec.id)).unwrap();
    svc.store.get_by_name(name).unwrap().unwrap()
}

/// A pid that no longer runs (a child that exited and was reaped).
pub(crate) fn dead_pid() -> i32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    c.wait().unwrap();
    c.id() as i32
}

pub(crate) fn done(req: &Request) -> std::result::Result<Reply, ClientError> {
    Ok(match req {
        Request::SignalVmm(r) => r.answer(banger_helper::Signalled { was_alive: true }),
        Request::VmmExited(r) => r.answer(Exited { exit: None }),
        Request::Launches(r) => r.answer(LaunchList {
            launches: Vec::new(),
        }),
        _ => Reply::Done,
    })
}

/// The helper's answer to a ping: the QEMU VMM on a /24, as bangerd-root gives it.
pub(crate) fn pong(req: &Request) -> std::result::Result<Reply, ClientError> {
    match req {
        Request::Ping(r) => Ok(r.answer(Pong {
            version: "0".into(),
            vmm: "banger-vmm-qemu".into(),
            vmm_version: None,
            jailed: false,
            instance: "1-1".into(),
            network: NetworkConfig {
                bridge: "b".into(),
                gateway: "10.0.0.1".parse().unwrap(),
                prefix_len: 24,
                nft_table: "t".into(),
            },
        })),
        r => done(r),
    }
}
