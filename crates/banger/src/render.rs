//! Output: tables and sentences for people, JSON for scripts (`--json`).

use std::borrow::Cow;

use banger_api::{Image, Vm, VmState};

use crate::Cli;

pub fn vm_done(cli: &Cli, vm: &Vm, what: &str) {
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(vm).expect("vm serializes")
        );
    } else {
        match vm.pid {
            Some(pid) => println!("{what} {} (pid {pid}, state {})", vm.name, vm.state),
            None => println!("{what} {} (state {})", vm.name, vm.state),
        }
    }
}

/// One row of `GET /v1/vms` ([`VmSummary`]'s fields that the table shows), borrowed
/// from the daemon's bytes: listing 1,000 VMs allocates per row only for numbers.
#[derive(serde::Deserialize)]
struct ListRow<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    state: VmState,
    vcpus: u32,
    memory_mib: u32,
    pid: Option<i32>,
    #[serde(borrow)]
    created_at: Cow<'a, str>,
    #[serde(borrow, default)]
    ip: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    image: Option<Cow<'a, str>>,
}

/// `vm list` as a table, from the daemon's JSON (a list of [`banger_api::VmSummary`]).
pub fn vm_list(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_all(vm_table(bytes)?.as_bytes())?;
    Ok(())
}

fn vm_table(bytes: &[u8]) -> anyhow::Result<String> {
    let vms: Vec<ListRow> = serde_json::from_slice(bytes)?;
    let dash = || Cow::Borrowed("-");
    let rows: Vec<[Cow<str>; 8]> = vms
        .into_iter()
        .map(|vm| {
            [
                vm.name,
                Cow::Borrowed(vm.state.as_str()),
                Cow::Owned(vm.vcpus.to_string()),
                Cow::Owned(format!("{} MiB", vm.memory_mib)),
                vm.ip.unwrap_or_else(dash),
                vm.image.unwrap_or_else(dash),
                vm.pid
                    .map(|p| Cow::Owned(p.to_string()))
                    .unwrap_or_else(dash),
                vm.created_at,
            ]
        })
        .collect();
    Ok(table(
        [
            "NAME", "STATE", "CPUS", "MEMORY", "IP", "IMAGE", "PID", "CREATED",
        ],
        &rows,
    ))
}

/// Left-aligned columns separated by two spaces; every cell is ASCII or short, so
/// byte width is display width except for names, which are ASCII by construction.
fn table<const N: usize, S: AsRef<str>>(header: [&str; N], rows: &[[S; N]]) -> String {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.as_ref().chars().count());
        }
    }
    let mut out = String::with_capacity((rows.len() + 1) * (widths.iter().sum::<usize>() + 2 * N));
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let start = out.len();
        for (i, (c, w)) in cells.zip(widths).enumerate() {
            out.push_str(c);
            if i + 1 < N {
                out.extend(std::iter::repeat_n(
                    ' ',
                    w.saturating_sub(c.chars().count()) + 2,
                ));
            }
        }
        let trimmed = out[start..].trim_end().len();
        out.truncate(start + trimmed);
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(AsRef::as_ref));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_columns_align_to_the_widest_cell() {
        let t = super::table(["A", "BB"], &[["long", "x"], ["s", "yy"]]);
        assert_eq!(t, "A     BB\nlong  x\ns     yy\n");
    }

    /// The daemon's summaries as a table: absent values are dashes, unknown fields
    /// (the id, the VMM) are ignored, an escaped string is decoded.
    #[test]
    fn a_vm_list_renders_the_daemon_s_summaries() {
        let json = br#"[
            {"id":"0123456789ab","name":"web","state":"running","vcpus":2,"memory_mib":512,"pid":4242,
             "vmm":"firecracker","created_at":"2026-12-01T10:00:00Z","ip":"172.30.0.2","image":"debian-bookworm"},
            {"id":"ba9876543210","name":"db-1","state":"stopped","vcpus":1,"memory_mib":128,"pid":null,
             "vmm":"","created_at":"2026-12-01T11:00:00\u005a"}
        ]"#;
        assert_eq!(
            super::vm_table(json).unwrap(),
            "NAME  STATE    CPUS  MEMORY   IP          IMAGE            PID   CREATED\n\
             web   running  2     512 MiB  172.30.0.2  debian-bookworm  4242  2026-12-01T10:00:00Z\n\
             db-1  stopped  1     128 MiB  -           -                -     2026-12-01T11:00:00Z\n"
        );
        assert!(super::vm_table(b"[{\"name\": 1}]").is_err());
    }
}

pub fn vm_show(cli: &Cli, vm: &Vm) {
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(vm).expect("vm serializes")
        );
        return;
    }
    let opt = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into())
    };
    let rows = [
        ("name", vm.name.to_string()),
        ("id", vm.id.clone()),
        ("state", vm.state.to_string()),
        (
            "pid",
            vm.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        ),
        (
            "vmm",
            if vm.vmm.is_empty() {
                "-".into()
            } else {
                vm.vmm.clone()
            },
        ),
        ("cpus", vm.spec.vcpus.to_string()),
        ("memory", format!("{} MiB", vm.spec.memory_mib)),
        ("ip", vm.ip.clone().unwrap_or_else(|| "-".into())),
        ("image", vm.spec.image.clone().unwrap_or_else(|| "-".into())),
        (
            "disk",
            match (&vm.disk, &vm.disk_method) {
                (Some(d), Some(m)) => format!("{} ({m})", d.display()),
                _ => "-".into(),
            },
        ),
        ("kernel", opt(&vm.spec.kernel)),
        ("initrd", opt(&vm.spec.initrd)),
        ("rootfs", opt(&vm.spec.rootfs)),
        (
            "boot args",
            vm.spec
                .boot_args
                .clone()
                .unwrap_or_else(|| format!("{} (default)", banger_api::DEFAULT_BOOT_ARGS)),
        ),
        ("console log", vm.console_log.display().to_string()),
        ("created", vm.created_at.clone()),
        ("updated", vm.updated_at.clone()),
        (
            "last error",
            vm.last_error.clone().unwrap_or_else(|| "-".into()),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<12} {v}");
    }
}

pub fn image_done(cli: &Cli, img: &Image, what: &str) {
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(img).expect("image serializes")
        );
    } else {
        println!(
            "{what} image {} ({})",
            img.name,
            &img.digest[..12.min(img.digest.len())]
        );
    }
}

pub fn image_list(cli: &Cli, imgs: &[Image]) {
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(imgs).expect("images serialize")
        );
        return;
    }
    let rows: Vec<[String; 5]> = imgs
        .iter()
        .map(|i| {
            [
                i.name.clone(),
                i.digest[..12.min(i.digest.len())].to_string(),
                format!("{} MiB", i.rootfs_bytes >> 20),
                i.source.clone(),
                i.used_by.len().to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(["NAME", "DIGEST", "SIZE", "SOURCE", "VMS"], &rows)
    );
}

pub fn image_show(cli: &Cli, i: &Image) {
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(i).expect("image serializes")
        );
        return;
    }
    let opt = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into())
    };
    for (k, v) in [
        ("name", i.name.clone()),
        ("digest", i.digest.clone()),
        ("source", i.source.clone()),
        ("kernel", i.kernel.display().to_string()),
        ("vmlinux", opt(&i.vmlinux)),
        ("initrd", opt(&i.initrd)),
        (
            "rootfs",
            format!("{} ({} MiB)", i.rootfs.display(), i.rootfs_bytes >> 20),
        ),
        ("created", i.created_at.clone()),
        (
            "used by",
            if i.used_by.is_empty() {
                "-".into()
            } else {
                i.used_by.join(", ")
            },
        ),
    ] {
        println!("{k:<9} {v}");
    }
}
