//! HTTP request heads: parsing never panics, and what parses re-emits to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stampede_proto::http::request::{Limits, Parsed, Request, RequestRepr};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(Parsed::Complete(request)) = Request::parse(data, &limits) else { return };
    assert!(request.len() <= data.len());
    let repr = RequestRepr::from_request(&request);
    let emitted = repr.to_bytes();
    match Request::parse(&emitted, &limits) {
        Ok(Parsed::Complete(again)) => assert_eq!(RequestRepr::from_request(&again), repr),
        other => panic!("re-emitted request does not parse: {other:?}\n{emitted:?}"),
    }
});
