//! `SHA256SUMS` as `banger update` reads it (`manifest::parse_sums`), after its
//! signature verified; the parser must hold without that.

#![no_main]

use banger_update::manifest::parse_sums;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sums) = parse_sums(data) else { return };
    for (i, (hash, name)) in sums.iter().enumerate() {
        assert!(
            hash.len() == 64
                && hash
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{hash:?}"
        );
        assert!(
            !name.is_empty() && !name.contains('/'),
            "{name:?} could leave the release directory"
        );
        assert!(
            sums[..i].iter().all(|(_, n)| n != name),
            "{name:?} listed twice"
        );
    }
});
