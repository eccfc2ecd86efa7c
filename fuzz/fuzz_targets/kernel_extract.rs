//! `banger_fc::kernel::extract_vmlinux`, which `bangerd` runs on the kernel a user
//! imports (`image import`) and `bangerd-root` on the kernel of a built image: find
//! an LZ4 (legacy frame) or gzip payload in a bzImage, decompress it, keep it if it is
//! an ELF. What comes out is an ELF, and never larger than `MAX_VMLINUX_BYTES` unless
//! it is the input itself (an ELF input is returned as it is).

#![no_main]

use banger_fc::kernel::{KernelError, MAX_VMLINUX_BYTES, extract_vmlinux};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match extract_vmlinux(data) {
        Ok(elf) => {
            assert!(elf.starts_with(b"\x7fELF"));
            assert!(
                elf.len() <= MAX_VMLINUX_BYTES || elf == data,
                "{} bytes extracted",
                elf.len()
            );
        }
        Err(KernelError::NoPayload | KernelError::NotElf | KernelError::TooLarge) => {}
    }
});
