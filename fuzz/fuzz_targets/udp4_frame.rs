//! Ethernet/IPv4/UDP frames of the AF_XDP path: parsing never panics, and
//! parse(emit(parse(x))) == parse(x).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stampede_proto::frame::roundtrip_check(data);
});
