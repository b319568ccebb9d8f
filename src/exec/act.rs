//! Integer activations as one run-time-typed value, and the one place where a storage kind known only
//! from the plan (u8, i8 or i16) becomes a Rust type.
//!
//! The integer kernels are generic over their input and output code types (`Conv2d<A, O>`); which
//! types a layer uses is decided by the plan's formats at run time. [`dispatch1`], [`dispatch2`] and
//! [`dispatch3`] turn one, two or three [`Kind`]s into a call of a generic visitor, so every op
//! builds its typed layer once, at construction, and nothing else matches on storage pairs.

use std::marker::PhantomData;

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::error::{Error, Result};
use crate::fixed::{QFormat, Quantizer};
use crate::kernels::Activation8or16;

/// An activation tensor in integer codes, with its format. Logically NCHW (or the op's own layout);
/// in memory possibly channels-last (an NCHW-shaped view with permuted strides).
#[derive(Debug, Clone)]
pub(crate) enum Act {
    /// Unsigned codes of at most 8 bits.
    U8(ArrayD<u8>, QFormat),
    /// Signed codes of at most 8 bits.
    I8(ArrayD<i8>, QFormat),
    /// Codes of 9 to 16 bits.
    I16(ArrayD<i16>, QFormat),
}

/// The storage of an activation format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    U8,
    I8,
    I16,
}

impl Kind {
    /// The storage that holds codes of format `f`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a format wider than 16 bits (or unsigned wider than 15).
    pub(crate) fn of(f: QFormat) -> Result<Kind> {
        match (f.is_signed(), f.bits()) {
            (false, 1..=8) => Ok(Kind::U8),
            (true, 1..=8) => Ok(Kind::I8),
            (false, 9..=15) | (true, 9..=16) => Ok(Kind::I16),
            _ => Err(Error::InvalidArgument {
                name: "activation format",
                reason: format!("{f} does not fit the kernels' u8, i8 or i16 activations"),
            }),
        }
    }
}

/// A code type of the integer network, tied to its [`Act`] variant.
pub(crate) trait Code: Activation8or16 {
    /// The codes, if `a` holds this type.
    fn view(a: &Act) -> Option<ArrayViewD<'_, Self>>;
    /// The codes and format, if `a` holds this type.
    fn take(a: Act) -> Option<(ArrayD<Self>, QFormat)>;
    /// Wraps codes of this type.
    fn wrap(codes: ArrayD<Self>, format: QFormat) -> Act;
}

macro_rules! code {
    ($t:ty, $v:ident) => {
        impl Code for $t {
            fn view(a: &Act) -> Option<ArrayViewD<'_, Self>> {
                match a {
                    Act::$v(c, _) => Some(c.view()),
                    _ => None,
                }
            }
            fn take(a: Act) -> Option<(ArrayD<Self>, QFormat)> {
                match a {
                    Act::$v(c, f) => Some((c, f)),
                    _ => None,
                }
            }
            fn wrap(codes: ArrayD<Self>, format: QFormat) -> Act {
                Act::$v(codes, format)
            }
        }
    };
}
code!(u8, U8);
code!(i8, I8);
code!(i16, I16);

/// A computation generic over one code type.
pub(crate) trait Visit1 {
    type Out;
    fn visit<A: Code>(self) -> Self::Out;
}
/// A computation generic over two code types (input, output).
pub(crate) trait Visit2 {
    type Out;
    fn visit<A: Code, O: Code>(self) -> Self::Out;
}
/// A computation generic over three code types (two inputs, output).
pub(crate) trait Visit3 {
    type Out;
    fn visit<A: Code, B: Code, O: Code>(self) -> Self::Out;
}

/// Runs `v` with the code type of `k`: the only match from kinds to types.
pub(crate) fn dispatch1<V: Visit1>(k: Kind, v: V) -> V::Out {
    match k {
        Kind::U8 => v.visit::<u8>(),
        Kind::I8 => v.visit::<i8>(),
        Kind::I16 => v.visit::<i16>(),
    }
}

/// Runs `v` with the code types of `a` and `o`.
pub(crate) fn dispatch2<V: Visit2>(a: Kind, o: Kind, v: V) -> V::Out {
    struct Second<V, A>(V, PhantomData<A>);
    impl<V: Visit2, A: Code> Visit1 for Second<V, A> {
        type Out = V::Out;
        fn visit<O: Code>(self) -> V::Out {
            self.0.visit::<A, O>()
        }
    }
    struct First<V>(Kind, V);
    impl<V: Visit2> Visit1 for First<V> {
        type Out = V::Out;
        fn visit<A: Code>(self) -> V::Out {
            dispatch1(self.0, Second::<V, A>(self.1, PhantomData))
        }
    }
    dispatch1(a, First(o, v))
}

/// Runs `v` with the code types of `a`, `b` and `o`.
pub(crate) fn dispatch3<V: Visit3>(a: Kind, b: Kind, o: Kind, v: V) -> V::Out {
    struct Rest<V, A>(V, PhantomData<A>);
    impl<V: Visit3, A: Code> Visit2 for Rest<V, A> {
        type Out = V::Out;
        fn visit<B: Code, O: Code>(self) -> V::Out {
            self.0.visit::<A, B, O>()
        }
    }
    struct First<V>(Kind, Kind, V);
    impl<V: Visit3> Visit1 for First<V> {
        type Out = V::Out;
        fn visit<A: Code>(self) -> V::Out {
            dispatch2(self.0, self.1, Rest::<V, A>(self.2, PhantomData))
        }
    }
    dispatch1(a, First(b, o, v))
}

/// The error when a step receives another storage than it was built for (an internal invariant).
pub(crate) fn wrong_storage(step: &str) -> Error {
    Error::Internal {
        reason: format!(
            "step '{step}' received activations in another storage than it was built for"
        ),
    }
}

impl Act {
    /// Quantizes real values to format `f` (the network's boundary: values are checked here).
    pub(crate) fn quantize(x: ArrayViewD<'_, f32>, f: QFormat) -> Result<Act> {
        struct Q<'a>(ArrayViewD<'a, f32>, QFormat);
        impl Visit1 for Q<'_> {
            type Out = Result<Act>;
            fn visit<A: Code>(self) -> Result<Act> {
                let q = Quantizer::<A>::new(self.1)?.quantize(self.0)?;
                Ok(A::wrap(q.into_codes(), self.1))
            }
        }
        dispatch1(Kind::of(f)?, Q(x, f))
    }

    pub(crate) fn format(&self) -> QFormat {
        match self {
            Act::U8(_, f) | Act::I8(_, f) | Act::I16(_, f) => *f,
        }
    }

    pub(crate) fn shape(&self) -> &[usize] {
        match self {
            Act::U8(a, _) => a.shape(),
            Act::I8(a, _) => a.shape(),
            Act::I16(a, _) => a.shape(),
        }
    }

    /// The codes widened to i64 (logical layout).
    pub(crate) fn codes_i64(&self) -> ArrayD<i64> {
        match self {
            Act::U8(a, _) => a.mapv(i64::from),
            Act::I8(a, _) => a.mapv(i64::from),
            Act::I16(a, _) => a.mapv(i64::from),
        }
    }

    /// Real values, in standard (row-major) layout whatever the codes' memory layout.
    pub(crate) fn dequantize(&self) -> ArrayD<f32> {
        let f = self.format();
        match self {
            Act::U8(a, _) => to_standard(a.mapv(|q| f.value_of(i64::from(q)) as f32)),
            Act::I8(a, _) => to_standard(a.mapv(|q| f.value_of(i64::from(q)) as f32)),
            Act::I16(a, _) => to_standard(a.mapv(|q| f.value_of(i64::from(q)) as f32)),
        }
    }

    /// The same codes under another logical shape (row-major order, as ONNX `Reshape`).
    pub(crate) fn reshape(self, shape: &[usize]) -> Result<Act> {
        struct R<'a>(Act, &'a [usize]);
        impl Visit1 for R<'_> {
            type Out = Result<Act>;
            fn visit<A: Code>(self) -> Result<Act> {
                let (a, f) = A::take(self.0).ok_or_else(|| wrong_storage("reshape"))?;
                let found = a.shape().to_vec();
                let a = to_standard(a)
                    .into_shape_with_order(IxDyn(self.1))
                    .map_err(|_| Error::ShapeMismatch {
                        what: "reshape of integer activations".into(),
                        expected: format!("{:?}", self.1),
                        found: format!("{found:?}"),
                    })?;
                Ok(A::wrap(a, f))
            }
        }
        let k = Kind::of(self.format())?;
        dispatch1(k, R(self, shape))
    }
}

/// The array in standard (row-major) layout. Channels-last activations (logical NCHW over NHWC memory,
/// as the convolutions leave them) are transposed plane by plane rather than element by element.
pub(crate) fn to_standard<T: Copy + Default>(a: ArrayD<T>) -> ArrayD<T> {
    if a.is_standard_layout() {
        return a;
    }
    if a.ndim() == 4 {
        let v = a.view().permuted_axes(IxDyn(&[0, 2, 3, 1]));
        if let Some(src) = v.as_slice() {
            let s = a.shape();
            let (c, hw) = (s[1], s[2] * s[3]);
            let mut out = vec![T::default(); src.len()];
            for (img, dst) in src.chunks_exact(c * hw).zip(out.chunks_exact_mut(c * hw)) {
                for (p, px) in img.chunks_exact(c).enumerate() {
                    for (ch, &v) in px.iter().enumerate() {
                        dst[ch * hw + p] = v;
                    }
                }
            }
            if let Ok(o) = ArrayD::from_shape_vec(IxDyn(s), out) {
                return o;
            }
        }
    }
    a.as_standard_layout().into_owned()
}
