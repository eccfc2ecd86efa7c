//! Extracting the ELF `vmlinux` Firecracker needs (v1.16.1 loads only ELF kernels on
//! x86_64) from a distribution's compressed `vmlinuz` (bzImage): find the compressed
//! payload by its magic, decompress it, and accept the result only if it is an ELF.
//! Debian uses LZ4 (legacy frame, as the kernel's build writes it); gzip is also
//! handled.

use std::io::Read;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("no LZ4 or gzip payload found in the kernel image")]
    NoPayload,
    #[error("the decompressed payload is not an ELF image")]
    NotElf,
    #[error("the decompressed payload is larger than {MAX_VMLINUX_BYTES} bytes")]
    TooLarge,
}

/// The largest vmlinux extracted. A distribution kernel decompresses to tens of MiB;
/// the limit keeps a hostile image (a gzip or LZ4 bomb given to `image import`) from
/// making its reader allocate without end.
pub const MAX_VMLINUX_BYTES: usize = 512 << 20;

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// Legacy LZ4 frames hold blocks of at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// The ELF kernel inside `bzimage`; an ELF input is returned as it is. A payload that
/// decompresses to more than [`MAX_VMLINUX_BYTES`] is refused.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, KernelError> {
    extract(bzimage, MAX_VMLINUX_BYTES)
}

fn extract(bzimage: &[u8], limit: usize) -> Result<Vec<u8>, KernelError> {
    if bzimage.starts_with(&ELF_MAGIC) {
        return Ok(bzimage.to_vec());
    }
    for start in find_all(bzimage, &LZ4_LEGACY_MAGIC) {
        if let Some(out) = lz4_legacy(&bzimage[start + 4..], limit)?
            && out.starts_with(&ELF_MAGIC)
        {
            return Ok(out);
        }
    }
    for start in find_all(bzimage, &GZIP_MAGIC) {
        let mut out = Vec::new();
        let d = flate2::read::GzDecoder::new(&bzimage[start..]);
        // The gzip stream is followed by other data; a trailing error after a full
        // decompression is expected, so judge by the content.
        let _ = d.take(limit as u64 + 1).read_to_end(&mut out);
        if out.len() > limit {
            return Err(KernelError::TooLarge);
        }
        if out.starts_with(&ELF_MAGIC) {
            return Ok(out);
        }
    }
    if find_all(bzimage, &LZ4_LEGACY_MAGIC).next().is_none()
        && find_all(bzimage, &GZIP_MAGIC).next().is_none()
    {
        Err(KernelError::NoPayload)
    } else {
        Err(KernelError::NotElf)
    }
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

/// Blocks of `<u32 LE compressed size><data>` until the input ends, a size does not
/// fit, or another frame's magic appears; more than `limit` bytes out is an error.
fn lz4_legacy(mut input: &[u8], limit: usize) -> Result<Option<Vec<u8>>, KernelError> {
    let mut out = Vec::new();
    while let Some((size, rest)) = input.split_first_chunk::<4>() {
        let size = u32::from_le_bytes(*size) as usize;
        if size == 0 || size == u32::from_le_bytes(LZ4_LEGACY_MAGIC) as usize || size > rest.len() {
            break;
        }
        match lz4_flex::block::decompress(&rest[..size], LZ4_LEGACY_BLOCK) {
            Ok(b) if out.len() + b.len() > limit => return Err(KernelError::TooLarge),
            Ok(b) => out.extend_from_slice(&b),
            Err(_) => break,
        }
        input = &rest[size..];
    }
    Ok((!out.is_empty()).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lz4(input: &[u8]) -> Option<Vec<u8>> {
        lz4_legacy(input, MAX_VMLINUX_BYTES).unwrap()
    }

    fn lz4_block(payload: &[u8]) -> Vec<u8> {
        lz4_flex::block::compress(payload)
    }

    #[test]
    fn lz4_legacy_stops_at_a_size_that_does_not_fit_or_is_a_magic() {
        let block = lz4_block(&[7u8; 4096]);
        let mut framed = (block.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&block);
        assert_eq!(lz4(&framed).map(|v| v.len()), Some(4096));
        // Two blocks: both decoded, in order.
        let mut two = framed.clone();
        let second = lz4_block(&[9u8; 100]);
        two.extend_from_slice(&(second.len() as u32).to_le_bytes());
        two.extend_from_slice(&second);
        let out = lz4(&two).unwrap();
        assert_eq!((out.len(), out[0], out[4096]), (4196, 7, 9));
        // A size one byte larger than what follows: the block is not read at all.
        let mut long = ((block.len() + 1) as u32).to_le_bytes().to_vec();
        long.extend_from_slice(&block);
        assert_eq!(lz4(&long), None);
        // A size equal to what follows is read (the bound is inclusive).
        let mut exact = (block.len() as u32).to_le_bytes().to_vec();
        exact.extend_from_slice(&block);
        assert!(lz4(&exact).is_some());
        // A zero size ends the stream; so does the legacy magic (the next frame).
        let mut zero = framed.clone();
        zero.extend_from_slice(&0u32.to_le_bytes());
        zero.extend_from_slice(&block);
        assert_eq!(lz4(&zero).map(|v| v.len()), Some(4096));
        let mut magic = framed.clone();
        magic.extend_from_slice(&LZ4_LEGACY_MAGIC);
        magic.extend_from_slice(&(second.len() as u32).to_le_bytes());
        magic.extend_from_slice(&second);
        assert_eq!(lz4(&magic).map(|v| v.len()), Some(4096));
    }

    fn fake_elf(len: usize) -> Vec<u8> {
        let mut v = ELF_MAGIC.to_vec();
        v.extend((0..len).map(|i| (i % 251) as u8));
        v
    }

    #[test]
    fn finds_an_lz4_legacy_payload_after_setup_code() {
        let elf = fake_elf(20 << 20); // spans three 8 MiB blocks
        let mut img = b"MZ setup code....".to_vec();
        img.extend_from_slice(&LZ4_LEGACY_MAGIC);
        for chunk in elf.chunks(LZ4_LEGACY_BLOCK) {
            let c = lz4_flex::block::compress(chunk);
            img.extend_from_slice(&(c.len() as u32).to_le_bytes());
            img.extend_from_slice(&c);
        }
        img.extend_from_slice(&(elf.len() as u32).to_le_bytes()); // trailing size, as the kernel appends
        assert_eq!(extract_vmlinux(&img).unwrap(), elf);
    }

    #[test]
    fn finds_a_gzip_payload() {
        use std::io::Write;
        let elf = fake_elf(4096);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        let mut img = vec![0u8; 512];
        img.extend(gz.finish().unwrap());
        img.extend_from_slice(b"trailer");
        assert_eq!(extract_vmlinux(&img).unwrap(), elf);
    }

    #[test]
    fn refuses_images_without_a_payload_or_with_a_non_elf_one() {
        assert_eq!(
            extract_vmlinux(b"just some bytes"),
            Err(KernelError::NoPayload)
        );
        let mut img = LZ4_LEGACY_MAGIC.to_vec();
        let c = lz4_flex::block::compress(b"not an elf at all, sorry");
        img.extend_from_slice(&(c.len() as u32).to_le_bytes());
        img.extend_from_slice(&c);
        assert_eq!(extract_vmlinux(&img), Err(KernelError::NotElf));
    }

    /// A bomb (a few MiB of gzip made 3 GiB) once made the reader allocate it all.
    #[test]
    fn a_payload_larger_than_the_limit_is_refused() {
        use std::io::Write;
        let elf = fake_elf(64 << 10);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        let mut img = b"MZ setup code".to_vec();
        img.extend(gz.finish().unwrap());
        assert_eq!(
            extract(&img, elf.len()),
            Ok(elf.clone()),
            "the limit is inclusive"
        );
        assert_eq!(extract(&img, elf.len() - 1), Err(KernelError::TooLarge));

        let mut img = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in elf.chunks(16 << 10) {
            let c = lz4_block(chunk);
            img.extend_from_slice(&(c.len() as u32).to_le_bytes());
            img.extend_from_slice(&c);
        }
        assert_eq!(
            extract(&img, elf.len()),
            Ok(elf.clone()),
            "the limit is inclusive"
        );
        assert_eq!(extract(&img, elf.len() - 1), Err(KernelError::TooLarge));
    }

    #[test]
    fn an_elf_is_returned_as_is() {
        let elf = fake_elf(10);
        assert_eq!(extract_vmlinux(&elf).unwrap(), elf);
    }

    /// A real Debian kernel (the test guest's, `scripts/guest-assets`): what comes out
    /// is checked by what the kernel itself says, not by the extractor's assumptions.
    #[test]
    fn a_real_debian_kernel_yields_its_own_x86_64_elf() {
        let cache = std::env::var_os("BANGER_CACHE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache")
            });
        let vmlinuz = cache.join("guest/vmlinuz");
        let bz = std::fs::read(&vmlinuz)
            .unwrap_or_else(|e| panic!("{}: {e}; run scripts/guest-assets", vmlinuz.display()));
        // A bzImage: the boot protocol's "HdrS" at 0x202 (Documentation/x86/boot.rst).
        assert_eq!(&bz[0x202..0x206], b"HdrS", "not a bzImage");
        let elf = extract_vmlinux(&bz).unwrap();
        assert!(
            elf.len() > bz.len(),
            "decompressed: {} of {} bytes",
            elf.len(),
            bz.len()
        );
        // ELF64, little-endian, an executable for x86-64 (e_machine 62).
        assert_eq!((&elf[..4], elf[4], elf[5]), (&ELF_MAGIC[..], 2, 1));
        assert_eq!(u16::from_le_bytes([elf[16], elf[17]]), 2, "ET_EXEC");
        assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 62, "EM_X86_64");
        // The banner the bzImage's own header points at is inside the vmlinux.
        let off = u16::from_le_bytes([bz[0x20e], bz[0x20f]]) as usize + 0x200;
        let banner = &bz[off..off + bz[off..].iter().position(|b| *b == 0).unwrap()];
        let version = std::str::from_utf8(banner)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        assert!(
            version.starts_with(|c: char| c.is_ascii_digit()),
            "{version}"
        );
        let needle = format!("Linux version {version}");
        assert!(
            elf.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} is not in the extracted kernel"
        );
    }
}
