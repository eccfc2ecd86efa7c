//! Output: tables and sentences for people, JSON for scripts (`--json`).

use banger_api::{Vm, VmSummary};

use crate::Cli;

pub fn vm_done(cli: &Cli, vm: &Vm, what: &str) {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(vm).expect("vm serializes"));
    } else {
        match vm.pid {
            Some(pid) => println!("{what} {} (pid {pid}, state {})", vm.name, vm.state),
            None => println!("{what} {} (state {})", vm.name, vm.state),
        }
    }
}

pub fn vm_list(cli: &Cli, vms: &[VmSummary]) {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(vms).expect("vms serialize"));
        return;
    }
    let rows: Vec<[String; 7]> = vms
        .iter()
        .map(|vm| {
            [
                vm.name.to_string(),
                vm.state.to_string(),
                vm.vcpus.to_string(),
                format!("{} MiB", vm.memory_mib),
                vm.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                if vm.vmm.is_empty() { "-".into() } else { vm.vmm.clone() },
                vm.created_at.clone(),
            ]
        })
        .collect();
    use std::io::Write;
    let t = table(["NAME", "STATE", "CPUS", "MEMORY", "PID", "VMM", "CREATED"], &rows);
    let _ = std::io::stdout().lock().write_all(t.as_bytes());
}

/// Left-aligned columns separated by two spaces; every cell is ASCII or short, so
/// byte width is display width except for names, which are ASCII by construction.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::with_capacity((rows.len() + 1) * (widths.iter().sum::<usize>() + 2 * N));
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let start = out.len();
        for (i, (c, w)) in cells.zip(widths).enumerate() {
            out.push_str(c);
            if i + 1 < N {
                out.extend(std::iter::repeat_n(' ', w.saturating_sub(c.chars().count()) + 2));
            }
        }
        let trimmed = out[start..].trim_end().len();
        out.truncate(start + trimmed);
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_columns_align_to_the_widest_cell() {
        let t = super::table(["A", "BB"], &[["long".into(), "x".into()], ["s".into(), "yy".into()]]);
        assert_eq!(t, "A     BB\nlong  x\ns     yy\n");
    }
}

pub fn vm_show(cli: &Cli, vm: &Vm) {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(vm).expect("vm serializes"));
        return;
    }
    let opt = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into());
    let rows = [
        ("name", vm.name.to_string()),
        ("id", vm.id.clone()),
        ("state", vm.state.to_string()),
        ("pid", vm.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())),
        ("vmm", if vm.vmm.is_empty() { "-".into() } else { vm.vmm.clone() }),
        ("cpus", vm.spec.vcpus.to_string()),
        ("memory", format!("{} MiB", vm.spec.memory_mib)),
        ("kernel", vm.spec.kernel.display().to_string()),
        ("initrd", opt(&vm.spec.initrd)),
        ("rootfs", opt(&vm.spec.rootfs)),
        ("boot args", vm.spec.boot_args.clone().unwrap_or_else(|| format!("{} (default)", banger_api::DEFAULT_BOOT_ARGS))),
        ("console log", vm.console_log.display().to_string()),
        ("created", vm.created_at.clone()),
        ("updated", vm.updated_at.clone()),
        ("last error", vm.last_error.clone().unwrap_or_else(|| "-".into())),
    ];
    for (k, v) in rows {
        println!("{k:<12} {v}");
    }
}
