//! The CUDA backend (the `cuda` feature): devices through cudarc's driver API, kernels compiled at
//! run time by NVRTC, cuBLAS matrix products, and `CudaExecutor`. The libraries are loaded at run
//! time, so this builds and runs without a GPU: there it reports that no driver is present instead
//! of panicking (cudarc panics when libcuda is missing, so every entry point checks first).

mod executor;
pub mod kernels;
pub mod peer;
#[cfg(test)]
mod tests;

use cudarc::driver::CudaContext;

pub use executor::CudaExecutor;
pub use peer::CudaPool;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver (libcuda) on this machine")]
    NoDriver,
    #[error("CUDA device {index} does not exist ({count} found)")]
    NoSuchDevice { index: usize, count: usize },
    #[error("CUDA driver call failed: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("no NVRTC library (libnvrtc) on this machine: the CUDA kernels are compiled at run time")]
    NoNvrtc,
    #[error("no cuBLAS library (libcublas) on this machine")]
    NoCublas,
    #[error("compiling the CUDA kernels failed:\n{0}")]
    Compile(String),
    #[error("cuBLAS call failed: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    #[error("model: {0}")]
    Model(String),
}

/// One device as the driver describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    pub index: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
}

/// Whether libcuda can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library and reports whether that
    // worked; it touches no CUDA state.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Every CUDA device on this machine.
pub fn devices() -> Result<Vec<CudaDeviceInfo>, CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    let count = usize::try_from(CudaContext::device_count()?).unwrap_or(0);
    (0..count).map(device).collect()
}

/// Device `index`, with a context created on it.
pub fn device(index: usize) -> Result<CudaDeviceInfo, CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    let count = usize::try_from(CudaContext::device_count()?).unwrap_or(0);
    if index >= count {
        return Err(CudaError::NoSuchDevice { index, count });
    }
    let ctx = CudaContext::new(index)?;
    Ok(CudaDeviceInfo {
        index,
        name: ctx.name()?,
        compute_capability: ctx.compute_capability()?,
        total_memory: ctx.total_mem()?,
    })
}
