//! bf16 autocast, as `torch.autocast(dtype=torch.bfloat16)` does it for linear layers: inside
//! [`with_autocast`], each linear layer casts its input and weight to bf16 for the matrix product and casts the
//! result back to f32, so the parameters (f32 `Var`s), their gradients and everything else of the step stay f32.
//! Like PyTorch's, the setting belongs to the thread that computes the forward pass.

use std::cell::Cell;

use candle_core::{DType, Result, Tensor};

thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Runs `f` with linear layers computing in `dtype` (`None` or `F32`: plain f32) on this thread, restoring
/// the previous setting after, also when `f` panics.
pub fn with_autocast<R>(dtype: Option<DType>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<DType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            AUTOCAST.with(|a| a.set(self.0));
        }
    }
    let dtype = dtype.filter(|d| *d != DType::F32);
    let _restore = Restore(AUTOCAST.with(|a| a.replace(dtype)));
    f()
}

/// The autocast dtype on this thread, if any.
pub(crate) fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(|a| a.get())
}

/// `x Wᵀ + b` with x and W cast to `dtype` for the product (rows x `[R, fan_in]`, weight `[fan_out, fan_in]`,
/// bias `[fan_out]` added in f32); returns f32. Gradients flow back to the f32 weight through the casts.
pub(crate) fn linear_in(dtype: DType, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let product = x.to_dtype(dtype)?.matmul(&weight.to_dtype(dtype)?.t()?)?;
    product.to_dtype(x.dtype())?.broadcast_add(bias)
}
