// The tridiagonal solve as a C++ torch operator: pelagos::solve_tridiagonal and its fused adjoint
// pelagos::solve_tridiagonal_adjoint (CPU kernels) and the C++ autograd kernel of the solve.
//
// Built on first use by pelagos/core/_thomas_op.py with the system C++ compiler against the installed
// torch, linked with the C Thomas kernels of _thomas_c.py (compiled from the same C source with the
// same flags as the ctypes library, so the arithmetic is the same object code), and loaded with
// torch.ops.load_library. The Python side registers the fake-tensor rules, the kernels for devices
// and dtypes the C kernels do not cover (CUDA, float16, ..., PELAGOS_TRIDIAGONAL_BACKEND=torch: the
// helper ops _solve_tridiagonal_python / _solve_tridiagonal_adjoint_python), the error report
// (_solve_tridiagonal_error, which raises pelagos' ShapeError / ConfigError / SolverError with the
// messages of the Python path) and the legacy backward operator solve_tridiagonal_backward.
//
// Canonical layout as in _thomas_c.py / tridiagonal.py: matrices (P, N), right-hand sides (P, K, N);
// every dimension along which the three diagonals are broadcast but rhs is not is a "K" dimension.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#ifndef PELAGOS_VBYTES
#define PELAGOS_VBYTES 64
#endif

// The C kernels (see _thomas_c.py). `work` is a 64-byte aligned scratch of 4*N (solve) or 5*N
// (adjoint) vectors of PELAGOS_VBYTES bytes.
extern "C" {
int thomas_solve_f64(long P, long K, long N, const double *a, const double *b, const double *c,
                     const double *d, double *x, double *piv, void *work);
int thomas_solve_f32(long P, long K, long N, const float *a, const float *b, const float *c,
                     const float *d, float *x, float *piv, void *work);
void thomas_adjoint_f64(long P, long K, long N, const double *a, const double *b, const double *c,
                        const double *piv, const double *x, const double *g, double *lam, double *ga,
                        double *gb, double *gc, void *work);
void thomas_adjoint_f32(long P, long K, long N, const float *a, const float *b, const float *c,
                        const float *piv, const float *x, const float *g, float *lam, float *ga,
                        float *gb, float *gc, void *work);
}

namespace {

using at::IntArrayRef;
using at::Tensor;
using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor>;

constexpr int64_t kVBytes = PELAGOS_VBYTES;
constexpr int64_t kParallelMin = int64_t(1) << 16;  // elements (P*K*N) below which one thread is faster

// ------------------------------------------------------------------------------------------------
// Scratch memory: one aligned area per thread, grown on demand
// ------------------------------------------------------------------------------------------------
struct Scratch {
  void *ptr = nullptr;
  int64_t bytes = 0;
  ~Scratch() { std::free(ptr); }
  void *get(int64_t vectors) {
    int64_t need = std::max<int64_t>(vectors, 5 * 64) * kVBytes;
    if (need > bytes) {
      std::free(ptr);
      ptr = std::aligned_alloc(kVBytes, need);
      TORCH_CHECK(ptr != nullptr, "pelagos::solve_tridiagonal: out of memory for a ", need, "-byte scratch");
      bytes = need;
    }
    return ptr;
  }
};

void *scratch(int64_t vectors) {
  thread_local Scratch s;
  return s.get(vectors);
}

// Contiguous ranges of the P matrices (multiples of the vector width, as the ctypes path splits them),
// one per torch thread when the batch is large enough; else one range.
std::vector<std::pair<int64_t, int64_t>> chunks(int64_t P, int64_t work, int64_t lanes) {
  int64_t n = at::get_num_threads();
  if (n <= 1 || work < kParallelMin || lanes * 2 > P) return {{0, P}};
  int64_t step = (P + n - 1) / n;
  step = (step + lanes - 1) / lanes * lanes;
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t s = 0; s < P; s += step) out.emplace_back(s, std::min(P, s + step));
  return out;
}

// One matrix shared by K right-hand sides (P == 1): ranges of the right-hand sides (multiples of two
// vector widths, as the kernel pairs its blocks), one per torch thread when there is enough work.
std::vector<std::pair<int64_t, int64_t>> rhs_chunks(int64_t P, int64_t K, int64_t work, int64_t lanes) {
  int64_t n = at::get_num_threads();
  if (P != 1 || n <= 1 || work < kParallelMin || K < 4 * lanes) return {};
  int64_t step = (K + n - 1) / n;
  step = (step + 2 * lanes - 1) / (2 * lanes) * (2 * lanes);
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t s = 0; s < K; s += step) out.emplace_back(s, std::min(K, s + step));
  return out;
}

template <class F>
void run_chunks(const std::vector<std::pair<int64_t, int64_t>> &ch, F f) {
  if (ch.size() == 1) {
    f(ch[0].first, ch[0].second);
    return;
  }
  at::parallel_for(0, (int64_t)ch.size(), 1, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; i++) f(ch[i].first, ch[i].second);
  });
}

template <class T>
struct Kernels;
template <>
struct Kernels<double> {
  static constexpr auto solve = thomas_solve_f64;
  static constexpr auto adjoint = thomas_adjoint_f64;
};
template <>
struct Kernels<float> {
  static constexpr auto solve = thomas_solve_f32;
  static constexpr auto adjoint = thomas_adjoint_f32;
};

template <class T>
const T *cptr(const Tensor &t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}
template <class T>
T *mptr(const Tensor &t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

// x = A^-1 d for (P, N) matrices and (P, K, N) right-hand sides (C-contiguous); whether x is finite.
template <class T>
bool solve_into(int64_t P, int64_t K, int64_t N, const Tensor &a, const Tensor &b, const Tensor &c,
                const Tensor &d, const Tensor &x) {
  constexpr int64_t lanes = kVBytes / sizeof(T);
  const T *pa = cptr<T>(a), *pb = cptr<T>(b), *pc = cptr<T>(c), *pd = cptr<T>(d);
  T *px = mptr<T>(x);
  auto kr = rhs_chunks(P, K, P * K * N, lanes);
  if (!kr.empty()) {
    std::vector<int> ok(kr.size(), 1);
    at::parallel_for(0, (int64_t)kr.size(), 1, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; i++) {
        int64_t k0 = kr[i].first, k1 = kr[i].second;
        ok[i] = Kernels<T>::solve(1, k1 - k0, N, pa, pb, pc, pd + k0 * N, px + k0 * N, nullptr, scratch(4 * N));
      }
    });
    for (int v : ok)
      if (!v) return false;
    return true;
  }
  auto ch = chunks(P, P * K * N, lanes);
  if (ch.size() == 1)
    return Kernels<T>::solve(P, K, N, pa, pb, pc, pd, px, nullptr, scratch(4 * N)) != 0;
  std::vector<int> ok(ch.size(), 1);
  at::parallel_for(0, (int64_t)ch.size(), 1, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; i++) {
      int64_t p0 = ch[i].first, n = ch[i].second - p0, m = p0 * N, r = p0 * K * N;
      ok[i] = Kernels<T>::solve(n, K, N, pa + m, pb + m, pc + m, pd + r, px + r, nullptr, scratch(4 * N));
    }
  });
  for (int v : ok)
    if (!v) return false;
  return true;
}

// lam = A^-T g and the requested matrix cotangents (undefined tensors are skipped), summed over K.
template <class T>
void adjoint_into(int64_t P, int64_t K, int64_t N, const Tensor &a, const Tensor &b, const Tensor &c,
                  const Tensor &x, const Tensor &g, const Tensor &lam, const Tensor &ga, const Tensor &gb,
                  const Tensor &gc) {
  constexpr int64_t lanes = kVBytes / sizeof(T);
  const T *pa = cptr<T>(a), *pb = cptr<T>(b), *pc = cptr<T>(c), *px = cptr<T>(x), *pg = cptr<T>(g);
  T *pl = mptr<T>(lam), *qa = mptr<T>(ga), *qb = mptr<T>(gb), *qc = mptr<T>(gc);
  if (!qa && !qb && !qc) {  // lam alone: the right-hand sides of one matrix split over threads
    auto kr = rhs_chunks(P, K, P * K * N, lanes);
    if (!kr.empty()) {
      run_chunks(kr, [&](int64_t k0, int64_t k1) {
        Kernels<T>::adjoint(1, k1 - k0, N, pa, pb, pc, nullptr, px + k0 * N, pg + k0 * N, pl + k0 * N, nullptr,
                            nullptr, nullptr, scratch(5 * N));
      });
      return;
    }
  }
  run_chunks(chunks(P, P * K * N, lanes), [&](int64_t p0, int64_t p1) {
    int64_t m = p0 * N, r = p0 * K * N;
    Kernels<T>::adjoint(p1 - p0, K, N, pa + m, pb + m, pc + m, nullptr, px + r, pg + r, pl + r,
                        qa ? qa + m : nullptr, qb ? qb + m : nullptr, qc ? qc + m : nullptr,
                        scratch(5 * N));
  });
}

// ------------------------------------------------------------------------------------------------
// Layout (as _Layout in tridiagonal.py)
// ------------------------------------------------------------------------------------------------
struct Layout {
  std::vector<int64_t> full, matrix, perm, inv_perm, permuted;
  int64_t P = 1, K = 1, N = 0;
  bool identity = true, direct = false;

  Tensor matrix_in(const Tensor &t) const {
    if (t.numel() == P * N && t.is_contiguous()) return t.view({P, N});
    return t.expand(matrix).reshape({P, N}).contiguous();
  }
  Tensor rhs_in(const Tensor &t) const {
    if (identity && t.numel() == P * K * N && t.is_contiguous()) return t.view({P, K, N});
    return t.expand(full).permute(perm).reshape({P, K, N}).contiguous();
  }
  Tensor rhs_out(const Tensor &x) const {
    if (identity) return x.view(full);
    return x.reshape(permuted).permute(inv_perm);
  }
};

int64_t numel(IntArrayRef s) {
  int64_t n = 1;
  for (auto v : s) n *= v;
  return n;
}

Layout layout(IntArrayRef sa, IntArrayRef sb, IntArrayRef sc, IntArrayRef sd) {
  Layout L;
  auto m = at::infer_size(at::infer_size(sa, sb), sc);
  L.full = at::infer_size(m, sd);
  const int64_t nd = (int64_t)L.full.size();
  L.matrix.assign(nd - (int64_t)m.size(), 1);
  L.matrix.insert(L.matrix.end(), m.begin(), m.end());
  std::vector<int64_t> rdims;
  for (int64_t j = 0; j < nd - 1; j++) {
    if (L.matrix[j] == L.full[j]) {
      L.perm.push_back(j);
      L.P *= L.full[j];
    } else {
      rdims.push_back(j);
      L.K *= L.full[j];
    }
  }
  L.perm.insert(L.perm.end(), rdims.begin(), rdims.end());
  L.perm.push_back(nd - 1);
  L.N = L.full[nd - 1];
  L.inv_perm.assign(nd, 0);
  for (int64_t i = 0; i < nd; i++) {
    L.inv_perm[L.perm[i]] = i;
    L.permuted.push_back(L.full[L.perm[i]]);
    if (L.perm[i] != i) L.identity = false;
  }
  const int64_t pn = L.P * L.N;
  L.direct = L.identity && numel(sa) == pn && numel(sb) == pn && numel(sc) == pn && numel(sd) == pn * L.K;
  return L;
}

// ------------------------------------------------------------------------------------------------
// The Python-side helpers (registered by pelagos.core.tridiagonal)
// ------------------------------------------------------------------------------------------------
[[noreturn]] void report(const Tensor &lower, const Tensor &diag, const Tensor &upper, const Tensor &rhs,
                         const std::optional<Tensor> &x, const std::string &what) {
  // pelagos' own error (ShapeError / ConfigError / SolverError, same messages as the Python path)
  // is raised by the Python kernel of this op and travels back through the dispatcher unchanged.
  auto op = c10::Dispatcher::singleton().findOp({"pelagos::_solve_tridiagonal_error", ""});
  if (op && op->hasKernelForDispatchKey(c10::DispatchKey::CompositeExplicitAutograd)) {
    op->typed<void(const Tensor &, const Tensor &, const Tensor &, const Tensor &,
                   const std::optional<Tensor> &)>()
        .call(lower, diag, upper, rhs, x);
  }
  TORCH_CHECK(false, "pelagos::solve_tridiagonal: ", what);
}

bool torch_forced() {
  const char *v = std::getenv("PELAGOS_TRIDIAGONAL_BACKEND");
  if (!v) return false;
  std::string s(v);
  for (auto &ch : s) ch = (char)std::tolower((unsigned char)ch);
  return s == "torch" || s == "python";
}

bool c_dtype(at::ScalarType t) { return t == at::kDouble || t == at::kFloat; }

// Shapes, devices and dtypes as _validate_meta in tridiagonal.py; returns the promoted dtype.
at::ScalarType validate(const Tensor &a, const Tensor &b, const Tensor &c, const Tensor &d) {
  const Tensor *ts[4] = {&a, &b, &c, &d};
  bool ok = true;
  for (auto *t : ts) ok = ok && t->dim() > 0;
  if (ok) {
    int64_t n = b.size(-1);
    for (auto *t : ts) ok = ok && t->size(-1) == n;
    ok = ok && n > 0;
  }
  if (ok) {
    try {
      at::infer_size(at::infer_size(at::infer_size(a.sizes(), b.sizes()), c.sizes()), d.sizes());
    } catch (const c10::Error &) {
      ok = false;
    }
  }
  for (auto *t : ts) ok = ok && t->device() == a.device();
  at::ScalarType dt = at::promote_types(at::promote_types(a.scalar_type(), b.scalar_type()),
                                        at::promote_types(c.scalar_type(), d.scalar_type()));
  ok = ok && at::isFloatingType(dt);
  if (!ok) report(a, b, c, d, std::nullopt, "invalid arguments (shapes, devices or dtypes)");
  return dt;
}

Tensor as(const Tensor &t, at::ScalarType dt) { return t.scalar_type() == dt ? t : t.to(dt); }

const c10::TypedOperatorHandle<Tensor(const Tensor &, const Tensor &, const Tensor &, const Tensor &, bool)> &
python_solve() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pelagos::_solve_tridiagonal_python", "")
                       .typed<Tensor(const Tensor &, const Tensor &, const Tensor &, const Tensor &, bool)>();
  return op;
}

using AdjointSig = Grads(const Tensor &, const Tensor &, const Tensor &, const Tensor &, const Tensor &, bool,
                         bool, bool, bool);

const c10::TypedOperatorHandle<AdjointSig> &python_adjoint() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pelagos::_solve_tridiagonal_adjoint_python", "")
                       .typed<AdjointSig>();
  return op;
}

const c10::TypedOperatorHandle<Tensor(const Tensor &, const Tensor &, const Tensor &, const Tensor &, bool)> &
solve_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pelagos::solve_tridiagonal", "")
                       .typed<Tensor(const Tensor &, const Tensor &, const Tensor &, const Tensor &, bool)>();
  return op;
}

const c10::TypedOperatorHandle<AdjointSig> &adjoint_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pelagos::solve_tridiagonal_adjoint", "")
                       .typed<AdjointSig>();
  return op;
}

bool contiguous(std::initializer_list<const Tensor *> ts) {
  for (auto *t : ts)
    if (!t->is_contiguous()) return false;
  return true;
}

// ------------------------------------------------------------------------------------------------
// CPU kernels
// ------------------------------------------------------------------------------------------------
Tensor solve_cpu(const Tensor &lower0, const Tensor &diag0, const Tensor &upper0, const Tensor &rhs0, bool check) {
  const at::ScalarType dt = validate(lower0, diag0, upper0, rhs0);
  if (!c_dtype(dt) || torch_forced()) return python_solve().call(lower0, diag0, upper0, rhs0, check);
  const Tensor lower = as(lower0, dt), diag = as(diag0, dt), upper = as(upper0, dt), rhs = as(rhs0, dt);
  const Layout L = layout(lower.sizes(), diag.sizes(), upper.sizes(), rhs.sizes());
  Tensor x;
  bool finite;
  if (L.direct && contiguous({&lower, &diag, &upper, &rhs})) {
    // common case (no broadcasting to materialise): the memory goes to the kernel as it is
    x = at::empty(L.full, rhs.options());
    finite = dt == at::kDouble ? solve_into<double>(L.P, L.K, L.N, lower, diag, upper, rhs, x)
                               : solve_into<float>(L.P, L.K, L.N, lower, diag, upper, rhs, x);
  } else {
    Tensor a = L.matrix_in(lower), b = L.matrix_in(diag), c = L.matrix_in(upper), d = L.rhs_in(rhs);
    Tensor y = at::empty({L.P, L.K, L.N}, rhs.options());
    finite = dt == at::kDouble ? solve_into<double>(L.P, L.K, L.N, a, b, c, d, y)
                               : solve_into<float>(L.P, L.K, L.N, a, b, c, d, y);
    x = L.rhs_out(y).contiguous();
  }
  if (check && !finite) report(lower, diag, upper, rhs, x, "the solution is not finite");
  return x;
}

Grads adjoint_cpu(const Tensor &lower0, const Tensor &diag0, const Tensor &upper0, const Tensor &x0,
                  const Tensor &gx0, bool n0, bool n1, bool n2, bool n3) {
  const at::ScalarType dt = validate(lower0, diag0, upper0, gx0);
  if (!c_dtype(dt) || torch_forced() || x0.scalar_type() != dt)
    return python_adjoint().call(lower0, diag0, upper0, x0, gx0, n0, n1, n2, n3);
  const Tensor lower = as(lower0, dt), diag = as(diag0, dt), upper = as(upper0, dt);
  const Tensor gx = as(gx0, dt);
  const Layout L = layout(lower.sizes(), diag.sizes(), upper.sizes(), x0.sizes());
  Tensor a, b, c, xs, g;
  if (L.direct && contiguous({&lower, &diag, &upper, &x0, &gx})) {
    a = lower, b = diag, c = upper, xs = x0, g = gx;
  } else {
    a = L.matrix_in(lower), b = L.matrix_in(diag), c = L.matrix_in(upper);
    xs = L.rhs_in(x0), g = L.rhs_in(gx);
  }
  auto opts = gx.options();
  Tensor lam = at::empty({L.P, L.K, L.N}, opts);
  Tensor ga = n0 ? at::empty(L.matrix, opts) : Tensor();
  Tensor gb = n1 ? at::empty(L.matrix, opts) : Tensor();
  Tensor gc = n2 ? at::empty(L.matrix, opts) : Tensor();
  if (dt == at::kDouble)
    adjoint_into<double>(L.P, L.K, L.N, a, b, c, xs, g, lam, ga, gb, gc);
  else
    adjoint_into<float>(L.P, L.K, L.N, a, b, c, xs, g, lam, ga, gb, gc);
  Tensor none = at::empty({0}, opts);
  return {n0 ? ga : none, n1 ? gb : none, n2 ? gc : none, n3 ? L.rhs_out(lam).contiguous() : none};
}

// ------------------------------------------------------------------------------------------------
// Autograd kernel
// ------------------------------------------------------------------------------------------------
Tensor reduce_to(const Tensor &g, IntArrayRef shape) { return g.sizes() == shape ? g : g.sum_to_size(shape); }

struct SolveFunction : public torch::autograd::Function<SolveFunction> {
  static Tensor forward(torch::autograd::AutogradContext *ctx, const Tensor &lower, const Tensor &diag,
                        const Tensor &upper, const Tensor &rhs, bool check) {
    Tensor x;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      x = solve_op().call(lower, diag, upper, rhs, check);
    }
    ctx->save_for_backward({lower, diag, upper, x});
    if (rhs.sizes() != x.sizes()) ctx->saved_data["rhs_shape"] = rhs.sizes().vec();
    return x;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &lower = saved[0], &diag = saved[1], &upper = saved[2], &x = saved[3];
    const Tensor &gx = grads[0];
    const bool n0 = ctx->needs_input_grad(0), n1 = ctx->needs_input_grad(1);
    const bool n2 = ctx->needs_input_grad(2), n3 = ctx->needs_input_grad(3);
    std::vector<int64_t> rhs_shape;
    auto it = ctx->saved_data.find("rhs_shape");
    if (it != ctx->saved_data.end()) rhs_shape = it->second.toIntVector();
    IntArrayRef rs = rhs_shape.empty() ? x.sizes() : IntArrayRef(rhs_shape);
    Tensor ga, gb, gc, gd;
    if (at::GradMode::is_enabled()) {
      // create_graph: the backward in differentiable operations and the solve itself (double backward,
      // as _adjoint_composable in tridiagonal.py): A^T has sub-diagonal upper[i-1], super-diagonal lower[i+1]
      const int64_t n = x.size(-1);
      Tensor at_ = at::constant_pad_nd(upper.narrow(-1, 0, n - 1), {1, 0}, 0);
      Tensor ct = at::constant_pad_nd(lower.narrow(-1, 1, n - 1), {0, 1}, 0);
      Tensor lam = solve_op().call(at_, diag, ct, gx, false);
      if (n0) ga = -(lam * at::constant_pad_nd(x.narrow(-1, 0, n - 1), {1, 0}, 0));
      if (n1) gb = -(lam * x);
      if (n2) gc = -(lam * at::constant_pad_nd(x.narrow(-1, 1, n - 1), {0, 1}, 0));
      if (n3) gd = lam;
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(ga, gb, gc, gd) = adjoint_op().call(lower, diag, upper, x, gx, n0, n1, n2, n3);
    }
    return {n0 ? reduce_to(ga, lower.sizes()) : Tensor(), n1 ? reduce_to(gb, diag.sizes()) : Tensor(),
            n2 ? reduce_to(gc, upper.sizes()) : Tensor(), n3 ? reduce_to(gd, rs) : Tensor(), Tensor()};
  }
};

Tensor solve_autograd(const Tensor &lower, const Tensor &diag, const Tensor &upper, const Tensor &rhs,
                      bool check) {
  if (at::GradMode::is_enabled() &&
      (lower.requires_grad() || diag.requires_grad() || upper.requires_grad() || rhs.requires_grad()))
    return SolveFunction::apply(lower, diag, upper, rhs, check);
  at::AutoDispatchBelowADInplaceOrView guard;  // nothing to record: no autograd node
  return solve_op().call(lower, diag, upper, rhs, check);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pelagos, m) {
  m.def("solve_tridiagonal(Tensor lower, Tensor diag, Tensor upper, Tensor rhs, bool check) -> Tensor");
  m.def(
      "solve_tridiagonal_adjoint(Tensor lower, Tensor diag, Tensor upper, Tensor x, Tensor gx, "
      "bool need_lower, bool need_diag, bool need_upper, bool need_rhs) -> (Tensor, Tensor, Tensor, Tensor)");
  // the backward operator of earlier pelagos versions (a Python kernel calling the adjoint), kept so
  // that compiled backward graphs in torch's on-disk caches still run
  m.def(
      "solve_tridiagonal_backward(Tensor lower, Tensor diag, Tensor upper, Tensor x, Tensor gx, bool[] needs) "
      "-> Tensor[]");
  m.def("_solve_tridiagonal_python(Tensor lower, Tensor diag, Tensor upper, Tensor rhs, bool check) -> Tensor");
  m.def(
      "_solve_tridiagonal_adjoint_python(Tensor lower, Tensor diag, Tensor upper, Tensor x, Tensor gx, "
      "bool need_lower, bool need_diag, bool need_upper, bool need_rhs) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_solve_tridiagonal_error(Tensor lower, Tensor diag, Tensor upper, Tensor rhs, Tensor? x) -> ()");
}

TORCH_LIBRARY_IMPL(pelagos, CPU, m) {
  m.impl("solve_tridiagonal", &solve_cpu);
  m.impl("solve_tridiagonal_adjoint", &adjoint_cpu);
}

TORCH_LIBRARY_IMPL(pelagos, Autograd, m) { m.impl("solve_tridiagonal", &solve_autograd); }

// Lets the loader check that the library it loaded is the one it built.
extern "C" int pelagos_thomas_op_abi(void) { return 1; }
