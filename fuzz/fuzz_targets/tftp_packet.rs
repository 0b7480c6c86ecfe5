//! TFTP packets: parsing never panics, and parse(emit(parse(x))) == parse(x).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stampede_proto::tftp::Repr;

fuzz_target!(|data: &[u8]| {
    let Ok(first) = Repr::parse_bytes(data) else { return };
    let mut buf = vec![0u8; first.buffer_len()];
    let len = first.emit(&mut buf);
    match Repr::parse_bytes(&buf[..len]) {
        Ok(second) => assert_eq!(first, second, "parse(emit(parse(x))) != parse(x)"),
        Err(err) => panic!("emitted packet does not parse: {err}"),
    }
});
