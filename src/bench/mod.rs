//! Benchmarks behind `spillway bench`: each scenario beside a baseline measured in the same run.

pub mod cpu;
pub mod decode;
pub mod heap;
pub mod log;
pub mod queue;
pub mod rss;
