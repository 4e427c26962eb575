//! Helpers shared by the GPU benches.

use std::time::Duration;

use sparse_attn::backend::{self, Gpu};
use sparse_attn::cudarc::driver::sys::CUevent_flags;
use sparse_attn::pattern::rng::SplitMix64;
use sparse_attn::Element;

/// The GPU to time on, or `None` (with a line saying why) when the kernels were not built
/// or there is no device: a bench without a GPU skips and exits successfully.
pub fn gpu_or_skip(bench: &str) -> Option<Gpu> {
    let build = backend::cuda_build();
    if !build.built {
        println!(
            "benches/{bench}: skipped, the GPU kernels were not built ({})",
            build.skip_reason
        );
        return None;
    }
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            println!("benches/{bench}: skipped, no GPU: {e}");
            None
        }
    }
}

/// Quick mode (`SPARSE_ATTN_BENCH_QUICK=1` or the argument `--quick`): every case of a full
/// run, each timed over a fixed small number of iterations with CUDA events and printed as a
/// table row, with criterion's sampling skipped (scripts/gpu-run.sh uses it to fit a device
/// call). Criterion never sees the arguments in this mode.
pub fn quick_mode() -> bool {
    std::env::var("SPARSE_ATTN_BENCH_QUICK").is_ok_and(|v| v == "1")
        || std::env::args().any(|a| a == "--quick")
}

/// `n` values uniform in [-1, 1) from the crate's generator: the time does not depend on
/// them, but NaN-free data keeps the kernels on their normal paths.
pub fn random_host<T: Element>(n: usize, seed: u64) -> Vec<T> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| T::from_f32(rng.unit())).collect()
}

/// Time of `iters` calls of `f` measured with CUDA events on `gpu`'s stream (the calls only
/// queue work; the events bracket what the GPU did).
pub fn time_gpu(gpu: &Gpu, iters: u64, mut f: impl FnMut()) -> Duration {
    let stream = gpu.stream();
    let start = stream
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .expect("record start event");
    for _ in 0..iters {
        f();
    }
    let end = stream
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .expect("record end event");
    end.synchronize().expect("synchronize");
    Duration::from_secs_f64(start.elapsed_ms(&end).expect("event time") as f64 / 1e3)
}
