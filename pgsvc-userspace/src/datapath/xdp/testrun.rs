//! `BPF_PROG_TEST_RUN` of the load balancer (the packet test tier and the datapath bench).
//! Built only with the `test-hooks` feature.

use aya::programs::{TestRun, TestRunOptions};
use pgsvc_common::programs;

use super::{DatapathError, XdpDatapath};

/// The outcome of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug)]
pub struct ProgramRun {
    pub action: u32,
    pub output: Vec<u8>,
    /// Mean time per run as the kernel measured it.
    pub duration: std::time::Duration,
}

impl XdpDatapath {
    /// Runs the load balancer once (or `repeat` times) over `input` with `BPF_PROG_TEST_RUN`.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_program(&mut self, input: &[u8], repeat: u32) -> Result<ProgramRun, DatapathError> {
        let mut out = vec![0u8; input.len() + 256];
        let prog = self.lb_program()?;
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                repeat: repeat.max(1),
                ..Default::default()
            })
            .map_err(|e| DatapathError::Program {
                program: programs::LB,
                source: Box::new(e),
            })?;
        out.truncate(res.data_size_out as usize);
        Ok(ProgramRun {
            action: res.return_value,
            output: out,
            duration: res.duration,
        })
    }
}
