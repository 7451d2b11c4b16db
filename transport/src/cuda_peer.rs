//! KV blocks between two GPU workers on one host: a device-to-device copy across contexts
//! (`cuMemcpyPeerAsync` through cudarc's driver API), with peer access enabled when the devices
//! allow it (otherwise the driver stages the copy through host memory). Built with the `cuda`
//! feature; on a machine without a driver every entry point says so instead of panicking.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no CUDA driver (libcuda) on this machine")]
    NoDriver,
    #[error("CUDA device {index} does not exist ({count} found)")]
    NoSuchDevice { index: usize, count: usize },
    #[error("a copy of {src} bytes into {dst} bytes")]
    Size { src: usize, dst: usize },
    #[error("CUDA driver call failed: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
}

/// Copies from buffers on one device to buffers on another.
#[derive(Debug)]
pub struct PeerCopier {
    src: Arc<CudaContext>,
    dst: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// The devices talk directly (NVLink or PCIe peer-to-peer).
    pub direct: bool,
}

fn driver_present() -> bool {
    // SAFETY: only tries to load the driver library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn context(index: usize) -> Result<Arc<CudaContext>, PeerError> {
    let count = usize::try_from(CudaContext::device_count()?).unwrap_or(0);
    if index >= count {
        return Err(PeerError::NoSuchDevice { index, count });
    }
    Ok(CudaContext::new(index)?)
}

impl PeerCopier {
    /// A copier from device `src` to device `dst` (the same index is allowed: a plain
    /// device-to-device copy).
    pub fn new(src: usize, dst: usize) -> Result<Self, PeerError> {
        if !driver_present() {
            return Err(PeerError::NoDriver);
        }
        let (s, d) = (context(src)?, context(dst)?);
        let mut can = 0i32;
        // SAFETY: plain queries and settings on live contexts.
        let direct = src != dst
            && unsafe { cudarc::driver::sys::cuDeviceCanAccessPeer(&mut can, d.cu_device(), s.cu_device()) }
                .result()
                .is_ok()
            && can == 1;
        if direct {
            d.bind_to_thread()?;
            // Already enabled is fine.
            let _ = unsafe { cudarc::driver::sys::cuCtxEnablePeerAccess(s.cu_ctx(), 0) };
        }
        let stream = d.new_stream()?;
        Ok(Self { src: s, dst: d, stream, direct })
    }

    pub fn source(&self) -> &Arc<CudaContext> {
        &self.src
    }

    pub fn destination(&self) -> &Arc<CudaContext> {
        &self.dst
    }

    /// Copy `src` (on the source device) into `dst` (on the destination device) and wait.
    pub fn copy(&self, src: &CudaSlice<u8>, dst: &mut CudaSlice<u8>) -> Result<(), PeerError> {
        if src.len() != dst.len() {
            return Err(PeerError::Size { src: src.len(), dst: dst.len() });
        }
        let (sp, _s) = src.device_ptr(&self.stream);
        let (dp, _d) = dst.device_ptr_mut(&self.stream);
        // SAFETY: both buffers are live for the call and the copy completes before they are
        // released (synchronize below); sizes are equal.
        unsafe {
            cudarc::driver::result::memcpy_peer_async(
                self.dst.cu_ctx(),
                dp,
                self.src.cu_ctx(),
                sp,
                src.len(),
                self.stream.cu_stream(),
            )?;
        }
        self.stream.synchronize()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_it_says_so() {
        if driver_present() {
            return; // covered by the GPU test below
        }
        assert!(matches!(PeerCopier::new(0, 1), Err(PeerError::NoDriver)));
    }

    /// Runs only where `ARMATURE_GPU_TESTS=1` (a GPU machine): 8 MiB from device 0 to the last
    /// device (device 0 itself on a one-GPU machine) and back to the host.
    #[test]
    fn blocks_cross_between_devices() {
        if std::env::var("ARMATURE_GPU_TESTS").as_deref() != Ok("1") {
            return;
        }
        let last = usize::try_from(CudaContext::device_count().unwrap()).unwrap() - 1;
        let copier = PeerCopier::new(0, last).unwrap();
        let data: Vec<u8> = (0..8 << 20).map(|i| (i * 13 % 251) as u8).collect();
        let src = copier.source().default_stream().clone_htod(&data).unwrap();
        let mut dst = copier.destination().default_stream().alloc_zeros::<u8>(data.len()).unwrap();
        copier.copy(&src, &mut dst).unwrap();
        let back = copier.destination().default_stream().clone_dtoh(&dst).unwrap();
        assert!(back == data, "peer copy corrupted the bytes (direct: {})", copier.direct);
    }
}
