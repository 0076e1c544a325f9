// Views of one layer's key or value cache in the two layouts engines use.
//
// Whatever the memory order, a kv_view is indexed logically as
// (head, token, dim), so algorithms are written once:
//   head_token_dim  [head][token][dim]   PyTorch / HF / kvpress order
//   token_head_dim  [token][head][dim]   llama.cpp / vLLM block order
// Storage may be float, float16 or bfloat16.
#pragma once

#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

enum class kv_layout { head_token_dim, token_head_dim };

inline const char* to_string(kv_layout layout) noexcept {
  return layout == kv_layout::head_token_dim ? "head_token_dim" : "token_head_dim";
}

template <class T>
class kv_view {
  static_assert(is_storage_type_v<T>, "kv_view storage must be float, float16 or bfloat16");

 public:
  using element_type = T;

  constexpr kv_view() noexcept = default;

  // view is indexed (head, token, dim); the dim stride must be 1 (rows of a
  // head vector are contiguous in every engine layout we know).
  kv_view(strided_view<T, 3> view, kv_layout layout) : view_(view), layout_(layout) {
    detail::require(view.extent(2) <= 1 || view.stride(2) == 1,
                    "kv_view: head_dim must be contiguous (stride 1), got stride ", view.stride(2));
  }

  template <class U, class = std::enable_if_t<!std::is_same_v<U, T> &&
                                              std::is_convertible_v<U (*)[], T (*)[]>>>
  constexpr kv_view(const kv_view<U>& other) noexcept  // NOLINT: implicit on purpose
      : view_(other.view()), layout_(other.layout()) {}

  constexpr const strided_view<T, 3>& view() const noexcept { return view_; }
  constexpr kv_layout layout() const noexcept { return layout_; }
  constexpr index_t heads() const noexcept { return view_.extent(0); }
  constexpr index_t tokens() const noexcept { return view_.extent(1); }
  constexpr index_t head_dim() const noexcept { return view_.extent(2); }
  constexpr index_t head_stride() const noexcept { return view_.stride(0); }
  constexpr index_t token_stride() const noexcept { return view_.stride(1); }

  // Pointer to the head_dim contiguous elements of (head, token).
  T* row(index_t head, index_t token) const noexcept(!KVCRUSH_ENABLE_BOUNDS_CHECKS) {
    return &view_(head, token, 0);
  }

  T& operator()(index_t head, index_t token, index_t dim) const
      noexcept(!KVCRUSH_ENABLE_BOUNDS_CHECKS) {
    return view_(head, token, dim);
  }

  // The first n tokens (e.g. the used part of a buffer with spare capacity).
  kv_view first_tokens(index_t n) const { return kv_view(view_.slice(1, 0, n), layout_); }

 private:
  strided_view<T, 3> view_{};
  kv_layout layout_ = kv_layout::head_token_dim;
};

// [head][token][dim] memory; token_capacity >= tokens is the allocated length
// of each head's token axis (the head stride is token_capacity * head_dim).
template <class T>
kv_view<T> make_head_token_dim(T* data, index_t heads, index_t tokens, index_t head_dim,
                               index_t token_capacity = -1) {
  if (token_capacity < 0) token_capacity = tokens;
  detail::require(heads >= 0 && tokens >= 0 && head_dim >= 0,
                  "make_head_token_dim: negative extent");
  detail::require(token_capacity >= tokens, "make_head_token_dim: token_capacity ",
                  token_capacity, " < tokens ", tokens);
  return kv_view<T>(strided_view<T, 3>(data, {heads, tokens, head_dim},
                                       {token_capacity * head_dim, head_dim, 1}),
                    kv_layout::head_token_dim);
}

// [token][head][dim] memory (the token stride is heads * head_dim).
template <class T>
kv_view<T> make_token_head_dim(T* data, index_t tokens, index_t heads, index_t head_dim) {
  detail::require(heads >= 0 && tokens >= 0 && head_dim >= 0,
                  "make_token_head_dim: negative extent");
  return kv_view<T>(strided_view<T, 3>(data, {heads, tokens, head_dim},
                                       {head_dim, heads * head_dim, 1}),
                    kv_layout::token_head_dim);
}

}  // namespace kvcrush
