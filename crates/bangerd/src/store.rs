//! SQLite state with versioned migrations (`rusqlite_migration`, schema version kept in
//! `PRAGMA user_version`). The daemon owns the database; nothing else writes it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, RwLock};

use banger_api::{VmName, VmSpec, VmState};
use banger_helper::VmId;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

/// Every schema change, in order. Never edit a released entry; append a new one.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE vms (
            id              TEXT PRIMARY KEY,
            name            TEXT NOT NULL UNIQUE,
            state           TEXT NOT NULL,
            spec            TEXT NOT NULL,
            vmm             TEXT NOT NULL DEFAULT '',
            pid             INTEGER,
            pid_start_time  INTEGER,
            last_error      TEXT,
            created_at      TEXT NOT NULL,
            updated_at      TEXT NOT NULL
        );",
        ),
        // v2: images, guest addresses, per-VM disks.
        M::up(
            "CREATE TABLE images (
                name        TEXT PRIMARY KEY,
                digest      TEXT NOT NULL,
                source      TEXT NOT NULL,
                created_at  TEXT NOT NULL
            );
            -- One row per allocated address: the primary key is what makes an address
            -- impossible to hand out twice.
            CREATE TABLE addresses (
                ip      TEXT PRIMARY KEY,
                vm_id   TEXT NOT NULL UNIQUE
            );
            ALTER TABLE vms ADD COLUMN image_digest TEXT;
            ALTER TABLE vms ADD COLUMN disk_method TEXT;",
        ),
        // v3: who created each VM (SO_PEERCRED): files the VM names are opened with
        // that user's rights when the daemons run as root. NULL for VMs made before.
        M::up(
            "ALTER TABLE vms ADD COLUMN owner_uid INTEGER;
            ALTER TABLE vms ADD COLUMN owner_gid INTEGER;",
        ),
    ])
}

/// The schema version this binary writes.
pub fn schema_version() -> u32 {
    3
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot make the database {path} private")]
    Private {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot migrate the database {path}")]
    Migrate {
        path: String,
        #[source]
        source: rusqlite_migration::Error,
    },
    #[error(
        "the database {path} has schema version {found}, newer than this binary's {ours}; use a newer bangerd"
    )]
    TooNew { path: String, found: u32, ours: u32 },
    #[error("a VM named {0} already exists")]
    NameTaken(VmName),
    #[error("an image named {0} already exists")]
    ImageTaken(String),
    #[error("no free address left in {0}; remove a VM or use a larger subnet")]
    PoolExhausted(String),
    #[error("database query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("stored VM {id} has an unreadable {what}: {detail}")]
    Corrupt {
        id: String,
        what: &'static str,
        detail: String,
    },
    #[error("VM {id}: {source}")]
    Transition {
        id: String,
        #[source]
        source: banger_api::InvalidTransition,
    },
    #[error("VM {0} does not exist")]
    Gone(String),
}

/// A state change, as [`Store::set_state`] records it: the new state, and what is
/// known of the VMM with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateUpdate<'a> {
    pub to: VmState,
    /// The VMM binary's name; `None` keeps what is recorded.
    pub vmm: Option<&'a str>,
    /// The VMM's (pid, start time); `None` clears it.
    pub process: Option<(i32, u64)>,
    /// The VM's `last_error`; `None` clears it.
    pub error: Option<&'a str>,
}

impl<'a> StateUpdate<'a> {
    pub fn to(to: VmState) -> Self {
        Self {
            to,
            vmm: None,
            process: None,
            error: None,
        }
    }
    pub fn vmm(self, vmm: Option<&'a str>) -> Self {
        Self { vmm, ..self }
    }
    pub fn process(self, process: Option<(i32, u64)>) -> Self {
        Self { process, ..self }
    }
    pub fn error(self, error: Option<&'a str>) -> Self {
        Self { error, ..self }
    }
}

/// One row of `vms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    pub id: VmId,
    pub name: VmName,
    pub state: VmState,
    pub spec: VmSpec,
    pub vmm: String,
    pub pid: Option<i32>,
    pub pid_start_time: Option<u64>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub image_digest: Option<String>,
    pub disk_method: Option<String>,
    pub ip: Option<String>,
    /// (uid, gid) of the user whose request created the VM; `None` for VMs older than
    /// schema v3.
    pub owner: Option<(u32, u32)>,
}

/// One row of `images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: String,
    pub digest: String,
    pub source: String,
    pub created_at: String,
}

/// The database, plus an in-memory mirror of the `vms` table. SQLite is the truth
/// on disk; every write goes to it first and then to the mirror, so reads (`vm list`
/// with thousands of VMs) cost no queries and no JSON decoding.
pub struct Store {
    conn: Mutex<Connection>,
    mirror: RwLock<Mirror>,
}

#[derive(Default)]
struct Mirror {
    /// By name, so listing is already sorted.
    by_name: BTreeMap<String, VmRecord>,
    /// id -> name
    names: HashMap<String, String>,
}

impl Mirror {
    fn put(&mut self, r: VmRecord) {
        self.names.insert(r.id.to_string(), r.name.to_string());
        self.by_name.insert(r.name.to_string(), r);
    }
}

/// What `--check-migrations` found.
#[derive(Debug, PartialEq, Eq)]
pub enum MigrationCheck {
    NoDatabase,
    UpToDate(u32),
    WillMigrate { from: u32, to: u32 },
}

/// Reports whether this binary can migrate the database at `path`, opening it
/// read-only so nothing is modified.
/// The database and its WAL and shared-memory files are the daemon user's alone
/// (SQLite gives the files it creates the database file's mode).
fn private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut f = path.as_os_str().to_owned();
        f.push(suffix);
        match std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

pub fn check_migrations(path: &Path) -> Result<MigrationCheck, StoreError> {
    if !path.exists() {
        return Ok(MigrationCheck::NoDatabase);
    }
    let p = path.display().to_string();
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            StoreError::Open {
                path: p.clone(),
                source,
            }
        })?;
    let found: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| StoreError::Open {
            path: p.clone(),
            source,
        })?;
    let ours = schema_version();
    if found > ours {
        return Err(StoreError::TooNew {
            path: p,
            found,
            ours,
        });
    }
    if found == ours {
        Ok(MigrationCheck::UpToDate(found))
    } else {
        Ok(MigrationCheck::WillMigrate {
            from: found,
            to: ours,
        })
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formatting of now cannot fail")
}

pub fn summary(r: &VmRecord) -> banger_api::VmSummary {
    banger_api::VmSummary {
        id: r.id.to_string(),
        name: r.name.clone(),
        state: r.state,
        vcpus: r.spec.vcpus,
        memory_mib: r.spec.memory_mib,
        pid: if r.state.has_vmm() { r.pid } else { None },
        vmm: r.vmm.clone(),
        created_at: r.created_at.clone(),
        ip: r.ip.clone(),
        image: r.spec.image.clone(),
    }
}

fn load_all(conn: &Connection) -> Result<Vec<VmRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM vms");
    let mut stmt = conn.prepare(&sql)?;
    let raws = stmt.query_map([], row)?.collect::<Result<Vec<_>, _>>()?;
    raws.into_iter().map(|(r, ())| r.decode()).collect()
}

const COLUMNS: &str = "id, name, state, spec, vmm, pid, pid_start_time, last_error, created_at, updated_at, \
     image_digest, disk_method, (SELECT ip FROM addresses WHERE addresses.vm_id = vms.id), owner_uid, owner_gid";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(VmRecordRaw, ())> {
    Ok((
        VmRecordRaw {
            id: r.get(0)?,
            name: r.get(1)?,
            state: r.get(2)?,
            spec: r.get(3)?,
            vmm: r.get(4)?,
            pid: r.get(5)?,
            pid_start_time: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
            last_error: r.get(7)?,
            created_at: r.get(8)?,
            updated_at: r.get(9)?,
            image_digest: r.get(10)?,
            disk_method: r.get(11)?,
            ip: r.get(12)?,
            owner_uid: r.get(13)?,
            owner_gid: r.get(14)?,
        },
        (),
    ))
}

struct VmRecordRaw {
    id: String,
    name: String,
    state: String,
    spec: String,
    vmm: String,
    pid: Option<i32>,
    pid_start_time: Option<u64>,
    last_error: Option<String>,
    created_at: String,
    updated_at: String,
    image_digest: Option<String>,
    disk_method: Option<String>,
    ip: Option<String>,
    owner_uid: Option<u32>,
    owner_gid: Option<u32>,
}

impl VmRecordRaw {
    fn decode(self) -> Result<VmRecord, StoreError> {
        let corrupt = |what, detail: String| StoreError::Corrupt {
            id: self.id.clone(),
            what,
            detail,
        };
        let name = VmName::new(self.name.clone()).map_err(|e| corrupt("name", e.to_string()))?;
        let state =
            VmState::parse(&self.state).ok_or_else(|| corrupt("state", self.state.clone()))?;
        let spec = serde_json::from_str(&self.spec).map_err(|e| corrupt("spec", e.to_string()))?;
        let id = VmId::new(self.id.clone()).map_err(|e| corrupt("id", e.to_string()))?;
        Ok(VmRecord {
            id,
            name,
            state,
            spec,
            vmm: self.vmm,
            pid: self.pid,
            pid_start_time: self.pid_start_time,
            last_error: self.last_error,
            created_at: self.created_at,
            updated_at: self.updated_at,
            image_digest: self.image_digest,
            disk_method: self.disk_method,
            ip: self.ip,
            owner: self.owner_uid.zip(self.owner_gid),
        })
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        if let Err(e @ StoreError::TooNew { .. }) = check_migrations(path) {
            return Err(e);
        }
        private(path).map_err(|source| StoreError::Private {
            path: p.clone(),
            source,
        })?;
        let mut conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: p.clone(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|source| StoreError::Migrate { path: p, source })?;
        let mut mirror = Mirror::default();
        for r in load_all(&conn)? {
            mirror.put(r);
        }
        Ok(Self {
            conn: Mutex::new(conn),
            mirror: RwLock::new(mirror),
        })
    }

    fn mirror(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        self.mirror.read().unwrap_or_else(|e| e.into_inner())
    }

    fn mirror_mut(&self) -> std::sync::RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(|e| e.into_inner())
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(
        &self,
        id: &str,
        spec: &VmSpec,
        owner: (u32, u32),
    ) -> Result<VmRecord, StoreError> {
        let t = now();
        let spec_json = serde_json::to_string(spec).expect("spec serializes");
        let r = self.conn().execute(
            "INSERT INTO vms (id, name, state, spec, created_at, updated_at, owner_uid, owner_gid) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
            params![
                id,
                spec.name.as_str(),
                VmState::Created.as_str(),
                spec_json,
                t,
                owner.0,
                owner.1
            ],
        );
        match r {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::NameTaken(spec.name.clone()));
            }
            Err(e) => return Err(e.into()),
        }
        let rec = self.reload(id)?.ok_or_else(|| StoreError::Corrupt {
            id: id.into(),
            what: "row",
            detail: "vanished after insert".into(),
        })?;
        Ok(rec)
    }

    /// Re-reads one row from SQLite into the mirror.
    fn reload(&self, id: &str) -> Result<Option<VmRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM vms WHERE id = ?1");
        let raw = self.conn().query_row(&sql, [id], row).optional()?;
        let rec = raw.map(|(r, ())| r.decode()).transpose()?;
        if let Some(r) = &rec {
            self.mirror_mut().put(r.clone());
        }
        Ok(rec)
    }

    pub fn get_by_id(&self, id: &str) -> Result<Option<VmRecord>, StoreError> {
        let m = self.mirror();
        Ok(m.names.get(id).and_then(|n| m.by_name.get(n)).cloned())
    }

    pub fn get_by_name(&self, name: &str) -> Result<Option<VmRecord>, StoreError> {
        Ok(self.mirror().by_name.get(name).cloned())
    }

    /// Every VM, sorted by name.
    pub fn list(&self) -> Result<Vec<VmRecord>, StoreError> {
        Ok(self.mirror().by_name.values().cloned().collect())
    }

    /// `vm list` lines, built under the read lock without copying whole records.
    pub fn summaries(&self) -> Vec<banger_api::VmSummary> {
        self.mirror().by_name.values().map(summary).collect()
    }

    /// (all VMs, running VMs) without copying records.
    pub fn counts(&self) -> (usize, usize) {
        let m = self.mirror();
        (
            m.by_name.len(),
            m.by_name
                .values()
                .filter(|r| r.state == VmState::Running)
                .count(),
        )
    }

    /// Sets the state and the runtime columns in one statement, so a crash never
    /// leaves a running state without its pid or the reverse.
    /// Records a state change, if the lifecycle allows it from the stored state
    /// ([`VmState::valid_transition`]); otherwise nothing changes.
    pub fn set_state(&self, id: &str, u: StateUpdate<'_>) -> Result<(), StoreError> {
        {
            let conn = self.conn();
            let from: Option<String> = conn
                .query_row("SELECT state FROM vms WHERE id = ?1", [id], |r| r.get(0))
                .optional()?;
            let from = from.ok_or_else(|| StoreError::Gone(id.to_string()))?;
            let from = VmState::parse(&from).ok_or_else(|| StoreError::Corrupt {
                id: id.to_string(),
                what: "state",
                detail: from.clone(),
            })?;
            from.valid_transition(u.to)
                .map_err(|source| StoreError::Transition {
                    id: id.to_string(),
                    source,
                })?;
            conn.execute(
                "UPDATE vms SET state = ?2, vmm = COALESCE(?3, vmm), pid = ?4, pid_start_time = ?5,
                     last_error = ?6, updated_at = ?7 WHERE id = ?1",
                params![
                    id,
                    u.to.as_str(),
                    u.vmm,
                    u.process.map(|p| p.0),
                    u.process.map(|p| p.1 as i64),
                    u.error,
                    now()
                ],
            )?;
        }
        self.reload(id)?;
        Ok(())
    }

    /// Records the VM's disk: which image it was cloned from and how.
    pub fn set_disk(&self, id: &str, digest: &str, method: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE vms SET image_digest = ?2, disk_method = ?3 WHERE id = ?1",
            params![id, digest, method],
        )?;
        self.reload(id)?;
        Ok(())
    }

    /// Gives the VM the lowest free host address of the subnet (`gateway`/`prefix`),
    /// or its existing one. The primary key on `addresses.ip` makes a double
    /// allocation impossible even across daemons.
    pub fn allocate_address(
        &self,
        vm_id: &str,
        gateway: std::net::Ipv4Addr,
        prefix: u8,
    ) -> Result<std::net::Ipv4Addr, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(ip) = tx
            .query_row("SELECT ip FROM addresses WHERE vm_id = ?1", [vm_id], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
        {
            return ip.parse().map_err(|_| StoreError::Corrupt {
                id: vm_id.into(),
                what: "address",
                detail: ip,
            });
        }
        let used: std::collections::HashSet<String> = {
            let mut st = tx.prepare("SELECT ip FROM addresses")?;
            st.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()?
        };
        let free = banger_helper::guest_addresses(gateway, prefix)
            .find(|ip| !used.contains(&ip.to_string()))
            .ok_or_else(|| {
                StoreError::PoolExhausted(banger_helper::subnet(gateway, prefix).to_string())
            })?;
        tx.execute(
            "INSERT INTO addresses (ip, vm_id) VALUES (?1, ?2)",
            params![free.to_string(), vm_id],
        )?;
        tx.commit()?;
        drop(conn);
        self.reload(vm_id)?;
        Ok(free)
    }

    pub fn insert_image(
        &self,
        name: &str,
        digest: &str,
        source: &str,
    ) -> Result<ImageRecord, StoreError> {
        let t = now();
        let r = self.conn().execute(
            "INSERT INTO images (name, digest, source, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, digest, source, t],
        );
        match r {
            Ok(_) => Ok(ImageRecord {
                name: name.into(),
                digest: digest.into(),
                source: source.into(),
                created_at: t,
            }),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::ImageTaken(name.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached("SELECT name, digest, source, created_at FROM images ORDER BY name")?;
        let rows = st
            .query_map([], |r| {
                Ok(ImageRecord {
                    name: r.get(0)?,
                    digest: r.get(1)?,
                    source: r.get(2)?,
                    created_at: r.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        Ok(self.images()?.into_iter().find(|i| i.name == name))
    }

    pub fn delete_image(&self, name: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM images WHERE name = ?1", [name])?;
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM addresses WHERE vm_id = ?1", [id])?;
            tx.execute("DELETE FROM vms WHERE id = ?1", [id])?;
            tx.commit()?;
        }
        let mut m = self.mirror_mut();
        if let Some(name) = m.names.remove(id) {
            m.by_name.remove(&name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> VmSpec {
        VmSpec {
            name: VmName::new(name).unwrap(),
            vcpus: 2,
            memory_mib: 512,
            image: None,
            disk_size_mib: None,
            ssh_keys: Vec::new(),
            kernel: Some("/k".into()),
            initrd: None,
            rootfs: None,
            boot_args: None,
        }
    }

    #[test]
    fn the_database_and_its_wal_are_private_even_if_they_were_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::write(&db, b"").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = Store::open(&db).unwrap();
        s.insert("0123456789ab", &spec("a"), (0, 0)).unwrap();
        for f in ["db", "db-wal", "db-shm"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }

    #[test]
    fn records_round_trip_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let r = s.insert("0123456789ab", &spec("a"), (1000, 1000)).unwrap();
        assert_eq!(r.state, VmState::Created);
        assert_eq!(r.spec, spec("a"));
        assert_eq!(r.owner, Some((1000, 1000)), "the creator is kept");
        assert!(matches!(
            s.insert("0123456789ac", &spec("a"), (0, 0)),
            Err(StoreError::NameTaken(_))
        ));
        s.set_state(&r.id, StateUpdate::to(VmState::Starting))
            .unwrap();
        let up = StateUpdate::to(VmState::Running)
            .vmm(Some("banger-vmm-qemu"))
            .process(Some((42, 7)));
        s.set_state(&r.id, up).unwrap();
        let r = s.get_by_name("a").unwrap().unwrap();
        assert_eq!(
            (r.state, r.pid, r.pid_start_time, r.vmm.as_str()),
            (VmState::Running, Some(42), Some(7), "banger-vmm-qemu")
        );
        s.delete(&r.id).unwrap();
        assert!(s.get_by_name("a").unwrap().is_none());
    }

    #[test]
    fn a_transition_the_lifecycle_does_not_allow_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let r = s.insert("0123456789ab", &spec("a"), (0, 0)).unwrap();
        // created -> running skips the start.
        let up = StateUpdate::to(VmState::Running)
            .vmm(Some("firecracker"))
            .process(Some((42, 7)));
        match s.set_state(&r.id, up) {
            Err(StoreError::Transition { id, source }) => {
                assert_eq!(id, r.id.as_str());
                assert_eq!(
                    (source.from, source.to),
                    (VmState::Created, VmState::Running)
                );
            }
            other => panic!("{other:?}"),
        }
        let after = s.get_by_id(&r.id).unwrap().unwrap();
        assert_eq!(after, r, "the refused change was not recorded");
        // A failure keeps its error and clears the process; vmm stays when not given.
        s.set_state(
            &r.id,
            StateUpdate::to(VmState::Starting)
                .vmm(Some("firecracker"))
                .process(Some((5, 6))),
        )
        .unwrap();
        s.set_state(&r.id, StateUpdate::to(VmState::Failed).error(Some("boom")))
            .unwrap();
        let f = s.get_by_id(&r.id).unwrap().unwrap();
        assert_eq!(
            (
                f.state,
                f.pid,
                f.pid_start_time,
                f.vmm.as_str(),
                f.last_error.as_deref()
            ),
            (VmState::Failed, None, None, "firecracker", Some("boom"))
        );
        assert!(matches!(
            s.set_state("0123456789ff", StateUpdate::to(VmState::Starting)),
            Err(StoreError::Gone(_))
        ));
    }

    #[test]
    fn addresses_are_unique_stable_released_and_run_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let gw: std::net::Ipv4Addr = "10.9.0.1".parse().unwrap();
        // A /29 has six host addresses; the gateway takes one.
        let mut got = Vec::new();
        for i in 0..5 {
            let id = format!("00000000000{i}");
            s.insert(&id, &spec(&format!("v{i}")), (0, 0)).unwrap();
            got.push(s.allocate_address(&id, gw, 29).unwrap());
        }
        let want: Vec<std::net::Ipv4Addr> = (2..=6)
            .map(|h| std::net::Ipv4Addr::new(10, 9, 0, h))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            s.allocate_address("000000000002", gw, 29).unwrap(),
            want[2],
            "stable per VM"
        );
        assert_eq!(
            s.get_by_id("000000000002").unwrap().unwrap().ip.as_deref(),
            Some("10.9.0.4")
        );
        s.insert("00000000000f", &spec("extra"), (0, 0)).unwrap();
        assert!(matches!(
            s.allocate_address("00000000000f", gw, 29),
            Err(StoreError::PoolExhausted(_))
        ));
        s.delete("000000000002").unwrap();
        assert_eq!(
            s.allocate_address("00000000000f", gw, 29).unwrap(),
            want[2],
            "released on delete"
        );
    }

    #[test]
    fn images_are_named_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.insert_image("deb", "abc", "import").unwrap();
        assert!(matches!(
            s.insert_image("deb", "def", "import"),
            Err(StoreError::ImageTaken(_))
        ));
        assert_eq!(s.image("deb").unwrap().unwrap().digest, "abc");
        s.delete_image("deb").unwrap();
        assert!(s.image("deb").unwrap().is_none());
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Store::open(&path)
            .unwrap()
            .insert("0123456789ab", &spec("keep"), (0, 0))
            .unwrap();
        let s = Store::open(&path).unwrap();
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn check_migrations_reports_without_modifying() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        assert_eq!(check_migrations(&path).unwrap(), MigrationCheck::NoDatabase);
        assert!(!path.exists(), "the check must not create the database");
        // An empty database at version 0 would be migrated.
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE x (a);")
            .unwrap();
        let before = std::fs::read(&path).unwrap();
        assert_eq!(
            check_migrations(&path).unwrap(),
            MigrationCheck::WillMigrate {
                from: 0,
                to: schema_version()
            }
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
        Store::open(&path).unwrap();
        assert_eq!(
            check_migrations(&path).unwrap(),
            MigrationCheck::UpToDate(schema_version())
        );
    }

    #[test]
    fn a_newer_schema_is_refused_by_check_and_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            check_migrations(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
        assert!(matches!(Store::open(&path), Err(StoreError::TooNew { .. })));
    }

    #[test]
    fn the_migration_list_matches_the_declared_version() {
        migrations().validate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("db")).unwrap();
        migrations().to_latest(&mut c).unwrap();
        let v: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema_version());
    }
}
