//! Output: tables and sentences for people, JSON for scripts (`--json`).

use banger_api::Vm;
use comfy_table::{Table, presets::NOTHING};

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

pub fn vm_list(cli: &Cli, vms: &[Vm]) {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(vms).expect("vms serialize"));
        return;
    }
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(["NAME", "STATE", "CPUS", "MEMORY", "PID", "VMM", "CREATED"]);
    for vm in vms {
        t.add_row([
            vm.name.to_string(),
            vm.state.to_string(),
            vm.spec.vcpus.to_string(),
            format!("{} MiB", vm.spec.memory_mib),
            vm.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            if vm.vmm.is_empty() { "-".into() } else { vm.vmm.clone() },
            vm.created_at.clone(),
        ]);
    }
    println!("{t}");
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
