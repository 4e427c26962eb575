//! Helpers shared by the GPU benches.

use std::time::Duration;

use sparse_attn::backend::Gpu;
use sparse_attn::cudarc::driver::sys::CUevent_flags;

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
