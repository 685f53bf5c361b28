// Great-circle distance of one (lat, lon) pair and its partial derivatives.
//
// This header has no dependencies: the CPU loops (gcd_cpu.cc), the CUDA kernel
// (gcd_kernels.cu.cc) and the TF-free CUDA entry points all include it, so every
// device computes the same formula with the same polynomials.
//
// Formula (Vincenty's special case for the sphere), for y = (lat1, lon1) and
// z = (lat2, lon2), with dlat = lat2 - lat1 and dlon = lon2 - lon1:
//   a = cos lat2 sin dlon                              east component
//   b = cos lat1 sin lat2 - sin lat1 cos lat2 cos dlon  north component at y
//   D = sin lat1 sin lat2 + cos lat1 cos lat2 cos dlon  = cos d
//   d = atan2(sqrt(a^2 + b^2), D)
// atan2 keeps the relative accuracy of the sine near 0 and of the cosine near pi,
// where arccos(D) loses half the digits. b (and c below) are rewritten with
// sin dlat and 1 - cos dlon = 2 sin^2(dlon/2) so they do not cancel when the points
// are close; that keeps the gradient's direction right at metre separations.
//
// Partials: minus the unit tangent, at each end, towards the other end:
//   dd/dlat1 = -b / N1, dd/dlat2 = -c / N2, dd/dlon2 = cos lat1 a / N1 = -dd/dlon1,
//   c = sin lat1 cos lat2 - cos lat1 sin lat2 cos dlon (north component at z),
//   N1 = sqrt(a^2 + b^2), N2 = sqrt((cos lat1 sin dlon)^2 + c^2), both = sin d.
// Normalising each end by its own norm keeps every partial within [-1, 1] even near
// the antipode, where b and c are all rounding error and N1, N2 differ.
// At N == 0 (coincident, or exactly antipodal, points) the distance has no
// derivative; we define the gradient as 0 there (the distance's minimum and maximum).
//
// All arithmetic stays in T: the float path never touches double, and nothing here
// calls libm, so the loops vectorise (sincos and atan are Cephes' polynomials, made
// branch-free with selects).
#ifndef NEWSDL_OPS_GCD_MATH_H_
#define NEWSDL_OPS_GCD_MATH_H_

#if defined(__CUDACC__)
#define GCD_HD __host__ __device__ __forceinline__
#else
#define GCD_HD inline __attribute__((always_inline))
#endif

namespace newsdl_gcd {

template <typename T>
struct C;

template <>
struct C<float> {
  static constexpr float kTwoOverPi = 0.636619772367581343f;
  // pi/2 in three parts; kf * P1 and kf * P2 are exact for |kf| < 2^15, so the
  // reduction is exact for |x| up to about 5e4 rad.
  static constexpr float P1 = 1.5703125f;
  static constexpr float P2 = 4.837512969970703125e-4f;
  static constexpr float P3 = 7.54978995489188216e-8f;
  static constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  static constexpr float kPi = 3.14159265358979323846f;
  static constexpr float kPiOver2 = 1.57079632679489661923f;
  static constexpr float kPiOver4 = 0.785398163397448309616f;
  static constexpr float kDegree = 0.0174532925199432957692f;

  static GCD_HD float sin_poly(float r, float z) {
    return r + r * z * ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f);
  }
  static GCD_HD float cos_poly(float z) {
    return 1.0f - 0.5f * z +
           z * z * ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f);
  }
  // atan(t) for t in [0, 1].
  static GCD_HD float atan01(float t) {
    const bool hi = t > 0.414213562373095f;  // tan(pi/8)
    const float shifted = (t - 1.0f) / (t + 1.0f);  // computed always: a select, not a branch
    const float x = hi ? shifted : t;
    const float z = x * x;
    const float p = (((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z -
                     3.33329491539e-1f) * z * x + x;
    return (hi ? kPiOver4 : 0.0f) + p;
  }
};

template <>
struct C<double> {
  static constexpr double kTwoOverPi = 0.636619772367581343075535053490;
  // pi/2 in three parts (Cephes' DP1..DP3, doubled): exact reduction for |kf| < 2^27.
  static constexpr double P1 = 1.57079625129699707031e0;
  static constexpr double P2 = 7.54978941586159635336e-8;
  static constexpr double P3 = 5.39030285815811905290e-15;
  static constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double kPi = 3.14159265358979323846264338328;
  static constexpr double kPiOver2 = 1.57079632679489661923132169164;
  static constexpr double kPiOver4 = 0.785398163397448309615660845820;
  static constexpr double kMoreBits = 6.123233995736765886130e-17;  // pi/4 - double(pi/4)
  static constexpr double kDegree = 0.0174532925199432957692369076849;

  static GCD_HD double sin_poly(double r, double z) {
    return r + r * z * (((((1.58962301576546568060e-10 * z - 2.50507477628578072866e-8) * z +
                           2.75573136213857245213e-6) * z - 1.98412698295895385996e-4) * z +
                         8.33333333332211858878e-3) * z - 1.66666666666666307295e-1);
  }
  static GCD_HD double cos_poly(double z) {
    return 1.0 - 0.5 * z +
           z * z * (((((-1.13585365213876817300e-11 * z + 2.08757008419747316778e-9) * z -
                       2.75573141792967388112e-7) * z + 2.48015872888517045348e-5) * z -
                     1.38888888888730564116e-3) * z + 4.16666666666665929218e-2);
  }
  static GCD_HD double atan01(double t) {
    const bool hi = t > 0.66;
    const double shifted = (t - 1.0) / (t + 1.0);
    const double x = hi ? shifted : t;
    const double z = x * x;
    const double p = ((((-8.750608600031904122785e-1 * z - 1.615753718733365076637e1) * z -
                        7.500855792314704667340e1) * z - 1.228866684490136173410e2) * z -
                      6.485021904942025371773e1);
    const double q = (((((z + 2.485846490142306297962e1) * z + 1.650270098316988542046e2) * z +
                        4.328810604912902668951e2) * z + 4.853903996359136964868e2) * z +
                      1.945506571482613964425e2);
    const double r = x * (z * p / q) + x;
    return hi ? (kPiOver4 + (r + 0.5 * kMoreBits)) : r;
  }
};

template <typename T>
GCD_HD T gcd_floor(T x) {
#if defined(__CUDA_ARCH__)
  return floor(x);
#else
  return __builtin_floor(x);
#endif
}
template <>
GCD_HD float gcd_floor<float>(float x) {
#if defined(__CUDA_ARCH__)
  return floorf(x);
#else
  return __builtin_floorf(x);
#endif
}

template <typename T>
GCD_HD T gcd_sqrt(T x) {
#if defined(__CUDA_ARCH__)
  return sqrt(x);
#else
  return __builtin_sqrt(x);
#endif
}
template <>
GCD_HD float gcd_sqrt<float>(float x) {
#if defined(__CUDA_ARCH__)
  return sqrtf(x);
#else
  return __builtin_sqrtf(x);
#endif
}

// sin and cos of x, reduced to r in [-pi/4, pi/4] around the nearest multiple of pi/2.
// The quadrant logic is done in floating point, not integers, so that on AVX without
// AVX2 the whole loop stays in 256-bit registers.
template <typename T>
GCD_HD void sin_cos(T x, T* s, T* c) {
  using K = C<T>;
  const T kf = (x * K::kTwoOverPi + K::kRound) - K::kRound;  // nearest integer
  const T r = ((x - kf * K::P1) - kf * K::P2) - kf * K::P3;
  const T z = r * r;
  const T sr = K::sin_poly(r, z);
  const T cr = K::cos_poly(z);
  const T q = kf - T(4) * gcd_floor(kf * T(0.25));  // kf mod 4, in {0, 1, 2, 3}
  const bool odd = (q == T(1)) | (q == T(3));
  const T sv = odd ? cr : sr;
  const T cv = odd ? sr : cr;
  *s = (q >= T(2)) ? -sv : sv;
  *c = ((q == T(1)) | (q == T(2))) ? -cv : cv;
}

// atan2(n, d) for n >= 0.
template <typename T>
GCD_HD T atan2_upper(T n, T d) {
  using K = C<T>;
  const T ad = d < T(0) ? -d : d;
  const bool steep = n > ad;
  // The ratio is at most 1; n and d are never both 0 for finite input (n^2 + d^2 = 1),
  // and NaNs flow through the division.
  const T t = (steep ? ad : n) / (steep ? n : ad);
  T r = K::atan01(t);
  r = steep ? K::kPiOver2 - r : r;
  return d < T(0) ? K::kPi - r : r;
}

// The constants that depend on the input unit, computed once per call (outside the
// loops: a per-element select on the unit keeps GCC from vectorising).
template <typename T>
struct Unit {
  T k;                     // radians per input unit
  T turn1, turn2, turn3;   // a full turn in the input unit, split so m * turn1 is exact
  T inv_turn;
};

template <typename T>
GCD_HD Unit<T> make_unit(bool degrees) {
  using K = C<T>;
  if (degrees) return Unit<T>{K::kDegree, T(360), T(0), T(0), T(1) / T(360)};
  return Unit<T>{T(1), T(4) * K::P1, T(4) * K::P2, T(4) * K::P3, T(0.25) * K::kTwoOverPi};
}

// Longitude difference z_lon - y_lon in the input unit, wrapped by whole turns, so that
// two points a few metres apart across the dateline (lon near +pi and -pi) keep a
// relatively exact difference: TwoSum gives the rounding error of the subtraction,
// which is added back once the turns are removed.
template <typename T>
GCD_HD T wrapped_dlon(T y_lon, T z_lon, const Unit<T>& u) {
  const T s = z_lon - y_lon;
  const T bp = s - z_lon;
  const T err = (z_lon - (s - bp)) + (-y_lon - bp);
  const T m = (s * u.inv_turn + C<T>::kRound) - C<T>::kRound;
  return (((s - m * u.turn1) - m * u.turn2) - m * u.turn3) + err;
}

// The geometry of one pair, before the square roots and divisions.
template <typename T>
struct Tangents {
  T a;         // east component at y of the direction to z (times sin d)
  T b;         // north component at y
  T c;         // north component at z of the direction to y
  T cos_d;
  T cos_ylat;
  T sin_dlon;
};

template <typename T>
GCD_HD Tangents<T> tangents(T y_lat, T y_lon, T z_lat, T z_lon, const Unit<T>& u) {
  const T k = u.k;
  // The latitude difference is exact for close points (Sterbenz), before scaling.
  const T dlat = (z_lat - y_lat) * k;
  const T half_dlon = wrapped_dlon(y_lon, z_lon, u) * (T(0.5) * k);
  T s1, c1, s2, c2, sh, ch, sp, cp;
  sin_cos(y_lat * k, &s1, &c1);
  sin_cos(z_lat * k, &s2, &c2);
  sin_cos(half_dlon, &sh, &ch);
  sin_cos(dlat, &sp, &cp);
  const T sin_dlon = T(2) * sh * ch;
  const T vers_dlon = T(2) * sh * sh;  // 1 - cos dlon, without cancellation
  return Tangents<T>{c2 * sin_dlon, sp + s1 * c2 * vers_dlon, c1 * s2 * vers_dlon - sp,
                     cp - c1 * c2 * vers_dlon, c1, sin_dlon};
}

// From the geometry to the central angle (radians) and the three partials the
// backward pass needs, with respect to the inputs in their own unit (k per radian).
template <typename T>
GCD_HD void finish(const Tangents<T>& g, T k, T* dist, T* j_ylat, T* j_zlat, T* j_zlon) {
  const T n_y = gcd_sqrt(g.a * g.a + g.b * g.b);
  const T a_z = g.cos_ylat * g.sin_dlon;
  const T n_z = gcd_sqrt(a_z * a_z + g.c * g.c);
  *dist = atan2_upper(n_y, g.cos_d);
  // The gradient := 0 where it is undefined; the divisions are unconditional so the
  // selects stay branch-free.
  const T k_over_ny = k / n_y;
  const T k_over_nz = k / n_z;
  const T inv_y = (n_y == T(0)) ? T(0) : k_over_ny;
  const T inv_z = (n_z == T(0)) ? T(0) : k_over_nz;
  *j_ylat = -g.b * inv_y;
  *j_zlat = -g.c * inv_z;
  *j_zlon = g.cos_ylat * g.a * inv_y;
}

// Central angle between y = (y_lat, y_lon) and z = (z_lat, z_lon), in radians, and
// its partials: tangents() then finish().
template <typename T>
GCD_HD void forward(T y_lat, T y_lon, T z_lat, T z_lon, const Unit<T>& u, T* dist, T* j_ylat,
                    T* j_zlat, T* j_zlon) {
  finish(tangents(y_lat, y_lon, z_lat, z_lon, u), u.k, dist, j_ylat, j_zlat, j_zlon);
}

}  // namespace newsdl_gcd

#endif  // NEWSDL_OPS_GCD_MATH_H_
