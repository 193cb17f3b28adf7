// Batch Renormalization's training step (Ioffe 2017, Algorithm 1) as one C++ autograd
// function: normzoo's fast path for contiguous CPU float32/float64 per-channel tensors.
//
// It runs the kernels of normzoo's Python path (normzoo/functional/renorm.py) -- one statistics
// pass (batch_norm_update_stats), one eval-mode batch-norm call with r and d folded into its
// per-channel scale and shift, batch norm's training backward from the saved statistics --
// and does the per-channel work (r, d, the moving averages, the fold, the weight gradient) in
// plain loops over C values instead of a few dozen Python-level operations. Every per-channel
// value is computed with the same operations, in the same order and the same dtype as the
// NumPy path (_renorm_step_numpy), so both give the same bits (tested); built with
// -ffp-contract=off so that no multiply-add is fused.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <tuple>
#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// lerp(old, fresh, rate) in separately rounded operations, as renorm.py's _average: the rate
// (a double in Python) is rounded to the statistics' dtype, as NumPy rounds a Python float.
template <typename T>
inline T average(T old, T fresh, double rate) {
  if (rate < 0.5) {
    return old + (fresh - old) * static_cast<T>(rate);
  }
  return fresh - (fresh - old) * static_cast<T>(1.0 - rate);
}

// np.maximum / np.minimum: NaN propagates.
template <typename T>
inline T maximum(T a, T b) {
  return (std::isnan(a) || a >= b) ? a : b;
}
template <typename T>
inline T minimum(T a, T b) {
  return (std::isnan(a) || a <= b) ? a : b;
}

// r, d, the "paper" update of the running averages (in place), invstd_B and the folded
// scale and shift, for C channels. rmin: 1/rmax as the Python path rounds it.
template <typename T>
void per_channel(int64_t channels, const T* mean_b, const T* var_b, T* running_mean,
                 T* running_var, const T* weight, const T* bias, double momentum, double eps,
                 double rmin, double rmax, double dmax, T* invstd_b, T* r, T* d, T* scale,
                 T* shift) {
  const T eps_t = static_cast<T>(eps);
  const T rmin_t = static_cast<T>(rmin), rmax_t = static_cast<T>(rmax);
  const T dmax_t = static_cast<T>(dmax), neg_dmax_t = static_cast<T>(-dmax);
  for (int64_t c = 0; c < channels; ++c) {
    const T sigma_b = std::sqrt(var_b[c] + eps_t);
    invstd_b[c] = T(1) / sigma_b;
    const T sigma = std::sqrt(running_var[c] + eps_t);
    r[c] = minimum(maximum(sigma_b / sigma, rmin_t), rmax_t);
    d[c] = minimum(maximum((mean_b[c] - running_mean[c]) / sigma, neg_dmax_t), dmax_t);
    const T new_sigma = average(sigma, sigma_b, momentum);
    running_var[c] = maximum(T(new_sigma * new_sigma - eps_t), T(0));
    running_mean[c] = average(running_mean[c], mean_b[c], momentum);
    if (weight != nullptr) {
      scale[c] = weight[c] * r[c];
      shift[c] = weight[c] * d[c];
    } else {
      scale[c] = r[c];
      shift[c] = d[c];
    }
    if (bias != nullptr) {
      shift[c] = shift[c] + bias[c];
    }
  }
}

template <typename T>
bool all_finite(int64_t n, const T* a, const T* b) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) {
    ok = ok && std::isfinite(a[i]) && std::isfinite(b[i]);
  }
  return ok;
}

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// 1 / rmax as renorm.py's _reciprocal_in rounds it: in float32, rmax rounded to float32 and
// the quotient rounded to float32 (as the tensor path computes it); in float64, plainly.
inline double reciprocal_in(double value, at::ScalarType dtype) {
  if (dtype == at::kFloat) {
    return static_cast<double>(static_cast<float>(1.0 / static_cast<double>(static_cast<float>(value))));
  }
  return 1.0 / value;
}

// The message Python turns into normzoo's own error (checks.py), with the shape in it.
constexpr const char* kNonFinite = "normzoo batch renorm: non-finite batch statistics";

class BatchRenormFunction : public torch::autograd::Function<BatchRenormFunction> {
 public:
  // weight and bias: optional (an undefined tensor is no valid autograd input)
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const c10::optional<at::Tensor>& weight_opt,
                            const c10::optional<at::Tensor>& bias_opt, at::Tensor running_mean,
                            at::Tensor running_var, double momentum, double eps, double rmax,
                            double dmax, bool check) {
    const double rmin = reciprocal_in(rmax, x.scalar_type());
    const at::Tensor weight = weight_opt.value_or(at::Tensor());
    const at::Tensor bias = bias_opt.value_or(at::Tensor());
    auto stats = at::batch_norm_update_stats(x, {}, {}, 0.0);
    const at::Tensor& mean_b = std::get<0>(stats);
    const at::Tensor& var_b = std::get<1>(stats);
    const int64_t channels = mean_b.numel();
    at::Tensor invstd_b = at::empty_like(mean_b);
    at::Tensor r = at::empty_like(mean_b), d = at::empty_like(mean_b);
    at::Tensor scale = at::empty_like(mean_b), shift = at::empty_like(mean_b);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normzoo_batch_renorm", [&] {
      const scalar_t* m = mean_b.data_ptr<scalar_t>();
      const scalar_t* v = var_b.data_ptr<scalar_t>();
      TORCH_CHECK(!check || all_finite(channels, m, v), kNonFinite);
      per_channel<scalar_t>(channels, m, v, running_mean.data_ptr<scalar_t>(),
                            running_var.data_ptr<scalar_t>(), data_or_null<scalar_t>(weight),
                            data_or_null<scalar_t>(bias), momentum, eps, rmin, rmax, dmax,
                            invstd_b.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                            d.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                            shift.data_ptr<scalar_t>());
    });
    ctx->save_for_backward({x});
    ctx->saved_data["mean_b"] = mean_b;
    ctx->saved_data["invstd_b"] = invstd_b;
    ctx->saved_data["r"] = r;
    ctx->saved_data["d"] = d;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["has_weight"] = weight.defined();
    ctx->saved_data["has_bias"] = bias.defined();
    return std::get<0>(at::native_batch_norm(x, scale, shift, mean_b, var_b, false, 0.0, eps));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // the weight gradient is computed on raw values: it carries no graph to differentiate
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "normzoo batch renorm's C++ backward is differentiable once: backward with "
                "create_graph=True (a double backward) is not supported; set NORMZOO_CPP=0 to "
                "use the Python path, whose backward raises only when differentiated again");
    const at::Tensor x = ctx->get_saved_variables()[0];
    const at::Tensor mean_b = ctx->saved_data["mean_b"].toTensor();
    const at::Tensor invstd_b = ctx->saved_data["invstd_b"].toTensor();
    const at::Tensor r = ctx->saved_data["r"].toTensor();
    const at::Tensor d = ctx->saved_data["d"].toTensor();
    const at::Tensor scale = ctx->saved_data["scale"].toTensor();
    const double eps = ctx->saved_data["eps"].toDouble();
    // needs_input_grad counts the tensor inputs given (a missing weight or bias is none)
    const bool has_weight = ctx->saved_data["has_weight"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_w = has_weight && ctx->needs_input_grad(1);
    const bool need_b = has_bias && ctx->needs_input_grad(has_weight ? 2 : 1);
    auto grads = at::native_batch_norm_backward(grad_outputs[0], x, scale, {}, {}, mean_b,
                                                invstd_b, true, eps,
                                                {need_x, need_w, need_w || need_b});
    at::Tensor gw;
    if (need_w) {  // d(weight * r)/dweight = r, d(weight * d + bias)/dweight = d
      const at::Tensor& g_scale = std::get<1>(grads);
      const at::Tensor& g_shift = std::get<2>(grads);
      gw = at::empty_like(r);
      AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "normzoo_batch_renorm_backward", [&] {
        const scalar_t* gs = g_scale.data_ptr<scalar_t>();
        const scalar_t* gh = g_shift.data_ptr<scalar_t>();
        const scalar_t* rp = r.data_ptr<scalar_t>();
        const scalar_t* dp = d.data_ptr<scalar_t>();
        scalar_t* out = gw.data_ptr<scalar_t>();
        for (int64_t c = 0; c < r.numel(); ++c) {
          const scalar_t from_scale = gs[c] * rp[c];
          const scalar_t from_shift = gh[c] * dp[c];
          out[c] = from_scale + from_shift;
        }
      });
    }
    at::Tensor gb = need_b ? std::get<2>(grads) : at::Tensor();
    at::Tensor gx = need_x ? std::get<0>(grads) : at::Tensor();
    return {gx, gw, gb, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(),  at::Tensor(), at::Tensor()};
  }
};

at::Tensor batch_renorm_train(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                              const c10::optional<at::Tensor>& bias, at::Tensor running_mean,
                              at::Tensor running_var, double momentum, double eps, double rmax,
                              double dmax, bool check) {
  return BatchRenormFunction::apply(x, weight, bias, running_mean, running_var, momentum, eps,
                                    rmax, dmax, check);
}

bool per_channel_ok(const c10::optional<at::Tensor>& t, at::ScalarType dtype, int64_t channels) {
  return !t.has_value() || !t->defined() ||
         (t->is_cpu() && t->scalar_type() == dtype && t->is_contiguous() &&
          t->layout() == at::kStrided && t->numel() == channels);
}

// The clip schedule of renorm.py's renorm_limits for a Python-int step: the same float64
// operations in the same order (the step converts exactly below 2^53).
std::pair<double, double> renorm_limits(int64_t step, double rmax, double dmax, int64_t warmup,
                                        int64_t r_ramp, int64_t d_ramp) {
  auto frac = [&](int64_t ramp) {
    if (ramp > 0) {
      const double f = static_cast<double>(step - warmup) / static_cast<double>(ramp);
      return std::min(std::max(f, 0.0), 1.0);
    }
    return step >= warmup ? 1.0 : 0.0;
  };
  return {1.0 + (rmax - 1.0) * frac(r_ramp), dmax * frac(d_ramp)};
}

// BatchRenorm.forward's training step in one call: the step counter read (num_batches_tracked,
// steps completed before this one), the schedule's limits, the averaging rate (cumulative:
// 1 / (steps + 1)), the step, and the counter advanced after it went through. None where the
// inputs are not all dense CPU float32/float64 (contiguous per-channel tensors, a CPU int64
// counter): the caller then takes the Python path.
c10::optional<at::Tensor> batch_renorm_layer_step(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& running_mean,
    const at::Tensor& running_var, const c10::optional<at::Tensor>& counter, double rate,
    bool cumulative, double eps, double rmax, double dmax, int64_t warmup, int64_t r_ramp,
    int64_t d_ramp, bool check) {
  const auto dtype = x.scalar_type();
  if (!x.is_cpu() || x.layout() != at::kStrided || x.dim() < 2 ||
      (dtype != at::kFloat && dtype != at::kDouble)) {
    return c10::nullopt;
  }
  const int64_t channels = x.size(1);
  if (!per_channel_ok(running_mean, dtype, channels) ||
      !per_channel_ok(running_var, dtype, channels) || !per_channel_ok(weight, dtype, channels) ||
      !per_channel_ok(bias, dtype, channels)) {
    return c10::nullopt;
  }
  const bool counted = counter.has_value() && counter->defined();
  if (counted && !(counter->is_cpu() && counter->scalar_type() == at::kLong &&
                   counter->numel() == 1 && counter->layout() == at::kStrided)) {
    return c10::nullopt;
  }
  const int64_t step = counted ? *counter->data_ptr<int64_t>() : warmup + std::max(r_ramp, d_ramp);
  const auto limits = renorm_limits(step, rmax, dmax, warmup, r_ramp, d_ramp);
  if (cumulative) {
    rate = counted ? 1.0 / (static_cast<double>(step) + 1.0) : 0.0;
  }
  at::Tensor y = BatchRenormFunction::apply(x, weight, bias, running_mean, running_var, rate, eps,
                                            limits.first, limits.second, check);
  if (counted) {
    *counter->data_ptr<int64_t>() += 1;  // the step went through (a rejected batch raised)
  }
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("batch_renorm_train", &batch_renorm_train,
        "Batch renorm's training forward (paper update), contiguous CPU float32/float64");
  m.def("batch_renorm_layer_step", &batch_renorm_layer_step,
        "BatchRenorm.forward's training step (counter, limits, rate, step), or None");
  m.def("renorm_limits", &renorm_limits, "The clip schedule (r_max, d_max) at an int step");
  m.attr("NON_FINITE") = kNonFinite;
}
