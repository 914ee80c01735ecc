//! Cancellation is process-wide, so it is tested in its own test binary (its own process):
//! raising it beside the unit tests would interrupt them.

use kexue_core::cancel::{self, Request};
use kexue_core::lm::{build, BuildOptions, Corpus};
use kexue_core::Error;

#[test]
fn a_request_stops_kernels_until_dropped() {
    let mut corpus = Corpus::new(false);
    corpus.add_sentence("the cat sat on the mat");
    let opts = BuildOptions {
        order: 3,
        discount_fallback: true,
        ..Default::default()
    };
    assert!(!cancel::requested());
    let request = Request::new();
    let second = Request::new();
    assert!(matches!(
        build(&corpus, &opts, true),
        Err(Error::Interrupted)
    ));
    drop(request);
    assert!(cancel::requested(), "another request is still live");
    drop(second);
    assert!(cancel::check().is_ok());
    assert!(build(&corpus, &opts, true).is_ok());
}
