// Registration and shape functions of the two great-circle-distance ops.
//
//   GreatCircleDistance(y: T[..., 2], z: T[..., 2]) -> d: T[...], jac: T[3, ...]
//   GreatCircleDistanceGrad(grad: T[...], jac: T[3, ...]) -> grad_y, grad_z: T[..., 2]
//
// The forward op emits the partials it needs for the backward pass (jac), so that
// the gradient is one multiply per output and never recomputes a sine. jac is an
// implementation detail of the gradient and is not differentiable itself.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace newsdl_gcd {

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("GreatCircleDistance")
    .Input("y: T")
    .Input("z: T")
    .Output("d: T")
    .Output("jac: T")
    .Attr("T: {float, double}")
    .Attr("degrees: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle y, z, batch, jac;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &y));
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(1), 1, &z));
      TF_RETURN_IF_ERROR(c->Merge(y, z, &y));  // no broadcasting: same shape or an error
      if (c->RankKnown(y)) {
        DimensionHandle last;
        TF_RETURN_IF_ERROR(c->WithValue(c->Dim(y, -1), 2, &last));
      }
      TF_RETURN_IF_ERROR(c->Subshape(y, 0, -1, &batch));
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(3), batch, &jac));
      c->set_output(0, batch);
      c->set_output(1, jac);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Central angle between (lat, lon) pairs y and z, in radians, and its partials.

y: [..., 2] (lat, lon), in radians, or in degrees if `degrees`.
z: same shape as y.
d: [...] central angle, in radians, accurate near 0 and near pi.
jac: [3, ...] d d/d y_lat, d d/d z_lat, d d/d z_lon (= -d d/d y_lon), in the
  inputs' unit, for GreatCircleDistanceGrad; 0 where y and z coincide.
)doc");

REGISTER_OP("GreatCircleDistanceGrad")
    .Input("grad: T")
    .Input("jac: T")
    .Output("grad_y: T")
    .Output("grad_z: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle grad = c->input(0), jac, jac_batch, out;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(1), 1, &jac));
      if (c->RankKnown(jac)) {
        DimensionHandle three;
        TF_RETURN_IF_ERROR(c->WithValue(c->Dim(jac, 0), 3, &three));
      }
      TF_RETURN_IF_ERROR(c->Subshape(jac, 1, &jac_batch));
      TF_RETURN_IF_ERROR(c->Merge(grad, jac_batch, &grad));
      TF_RETURN_IF_ERROR(c->Concatenate(grad, c->Vector(2), &out));
      c->set_output(0, out);
      c->set_output(1, out);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Backward pass of GreatCircleDistance: grad_y = grad * d d/d y, grad_z = grad * d d/d z.
)doc");

}  // namespace newsdl_gcd
