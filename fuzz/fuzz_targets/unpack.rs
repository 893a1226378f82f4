//! Fuzzes the packed-tensor decoder: any byte string must give a tensor or a typed
//! error, never a panic, a hang or an allocation beyond the limit.
//! Run (see docs/PACKING.md): `LD_LIBRARY_PATH=$PWD/../third_party/libtorch/torch/lib
//! RUSTC_BOOTSTRAP=1 cargo fuzz run -s none unpack`.
#![no_main]
use dyno::pack::{unpack, DecodeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_elements: 1 << 20,
    };
    if let Ok(u) = unpack(data, &limits) {
        assert_eq!(u.values.len() as u64, u.header.elements());
        assert!(u.values.iter().all(|v| v.is_finite()));
    }
});
