// fastpix._decode: JPEG (libjpeg-turbo) and PNG (libpng) decoding, the pix2pix A|B split and a bicubic resize
// that reproduces PIL's Image.resize(size, BICUBIC) bit for bit.
//
// libjpeg and libpng report errors by longjmp. The codec functions below are therefore written C-style: no object
// with a destructor is alive between setjmp and a possible longjmp (memory is malloc/free, state is plain structs).
// Python objects are made only after a codec function has returned.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

extern "C" {
#include <jpeglib.h>
#include <jerror.h>
}
#include <png.h>

namespace py = pybind11;

namespace {

enum Status { FP_OK = 0, FP_ERROR = 1, FP_UNSUPPORTED = 2 };

struct Image {
    unsigned char* pixels;  // malloc'd, h rows of w*c bytes
    int w, h, c;            // c: 1 (grey) or 3 (RGB)
};

struct Options {
    unsigned long long max_pixels;
    // DCT-domain downscale: the smallest acceptable decoded size; 0 disables it (exact decode).
    int draft_min_w, draft_min_h;
};

constexpr size_t kErrLen = 512;

#ifdef JCS_EXTENSIONS
constexpr J_COLOR_SPACE kRgbOut = JCS_EXT_RGB;  // libjpeg-turbo: packed RGB whatever RGB_PIXELSIZE was built as
#else
constexpr J_COLOR_SPACE kRgbOut = JCS_RGB;
#endif

// ------------------------------------------------------------------------------------------------ JPEG

struct JpegErr {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX + 64];
};

void jpeg_fail(j_common_ptr cinfo) {
    JpegErr* e = reinterpret_cast<JpegErr*>(cinfo->err);
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jb, 1);
}

// libjpeg only warns on a premature end of data and pads the image with grey; PIL raises "image file is
// truncated" there, so that warning becomes an error. Other warnings (corrupt data it can resync from) are kept
// as warnings, as PIL does.
void jpeg_message(j_common_ptr cinfo, int level) {
    if (level >= 0) return;
    if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
        JpegErr* e = reinterpret_cast<JpegErr*>(cinfo->err);
        std::snprintf(e->msg, sizeof e->msg, "image file is truncated");
        longjmp(e->jb, 1);
    }
    cinfo->err->num_warnings++;
}

void jpeg_silent(j_common_ptr) {}

// PIL reads every 4-component JPEG as Adobe-inverted CMYK ("CMYK;I") and converts with its cmyk2rgb.
inline unsigned char cmyk_channel(int raw_ink, int nk) {
    int ink = 255 - raw_ink;
    int tmp = ink * nk + 128;
    int v = nk - (((tmp >> 8) + tmp) >> 8);
    return static_cast<unsigned char>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

int decode_jpeg(const unsigned char* data, size_t size, const Options* opt, Image* out, char* err) {
    struct jpeg_decompress_struct cinfo;
    JpegErr jerr;
    unsigned char* volatile pixels = nullptr;
    std::memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&jerr.pub);
    jerr.pub.error_exit = jpeg_fail;
    jerr.pub.emit_message = jpeg_message;
    jerr.pub.output_message = jpeg_silent;
    jerr.msg[0] = 0;
    if (setjmp(jerr.jb)) {
        std::free(pixels);
        jpeg_destroy_decompress(&cinfo);
        std::snprintf(err, kErrLen, "JPEG: %s", jerr.msg);
        return FP_ERROR;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
    jpeg_read_header(&cinfo, TRUE);

    unsigned long long npix = (unsigned long long)cinfo.image_width * cinfo.image_height;
    if (npix > opt->max_pixels) {
        std::snprintf(err, kErrLen, "image size %ux%u (%llu pixels) exceeds the limit of %llu pixels "
                      "(decompression bomb guard)", cinfo.image_width, cinfo.image_height, npix, opt->max_pixels);
        jpeg_destroy_decompress(&cinfo);
        return FP_ERROR;
    }

    int in_c;
    switch (cinfo.jpeg_color_space) {
        case JCS_GRAYSCALE: cinfo.out_color_space = JCS_GRAYSCALE; in_c = 1; break;
        case JCS_YCbCr:
        case JCS_RGB: cinfo.out_color_space = kRgbOut; in_c = 3; break;
        case JCS_CMYK:
        case JCS_YCCK: cinfo.out_color_space = JCS_CMYK; in_c = 4; break;
        default:
            std::snprintf(err, kErrLen, "JPEG colour space %d not handled natively", (int)cinfo.jpeg_color_space);
            jpeg_destroy_decompress(&cinfo);
            return FP_UNSUPPORTED;
    }
    if (opt->draft_min_w > 0) {
        // Largest power-of-two reduction that still leaves at least the requested size.
        for (int denom = 8; denom >= 2; denom /= 2) {
            unsigned sw = (cinfo.image_width + denom - 1) / denom, sh = (cinfo.image_height + denom - 1) / denom;
            if (sw >= (unsigned)opt->draft_min_w && sh >= (unsigned)opt->draft_min_h) {
                cinfo.scale_num = 1;
                cinfo.scale_denom = denom;
                break;
            }
        }
    }
    jpeg_start_decompress(&cinfo);
    const int w = cinfo.output_width, h = cinfo.output_height;
    const size_t row_bytes = (size_t)w * in_c;
    pixels = static_cast<unsigned char*>(std::malloc(row_bytes * h));
    if (!pixels) {
        std::snprintf(jerr.msg, sizeof jerr.msg, "out of memory for %dx%d", w, h);
        longjmp(jerr.jb, 1);
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW rows[16];
        int n = 0;
        for (; n < 16 && cinfo.output_scanline + n < cinfo.output_height; n++)
            rows[n] = pixels + (size_t)(cinfo.output_scanline + n) * row_bytes;
        jpeg_read_scanlines(&cinfo, rows, n);
    }
    // No jpeg_finish_decompress: all pixels are in, and (like PIL) a missing EOI after them is not an error.
    jpeg_destroy_decompress(&cinfo);

    int c = in_c;
    if (in_c == 4) {
        unsigned char* p = pixels;
        for (size_t i = 0, n = (size_t)w * h; i < n; i++) {
            int nk = p[4 * i + 3];  // raw K is inverted: 255 - k
            unsigned char r = cmyk_channel(p[4 * i], nk), g = cmyk_channel(p[4 * i + 1], nk),
                          b = cmyk_channel(p[4 * i + 2], nk);
            p[3 * i] = r; p[3 * i + 1] = g; p[3 * i + 2] = b;
        }
        c = 3;
    }
    out->pixels = pixels;
    out->w = w; out->h = h; out->c = c;
    return FP_OK;
}

// ------------------------------------------------------------------------------------------------ PNG

struct PngSrc {
    const unsigned char* data;
    size_t size, pos;
    char msg[kErrLen];
};

void png_fail(png_structp png, png_const_charp msg) {
    PngSrc* s = static_cast<PngSrc*>(png_get_error_ptr(png));
    std::snprintf(s->msg, sizeof s->msg, "%s", msg);
    png_longjmp(png, 1);
}

void png_quiet(png_structp, png_const_charp) {}

void png_read_mem(png_structp png, png_bytep out, png_size_t len) {
    PngSrc* s = static_cast<PngSrc*>(png_get_io_ptr(png));
    if (len > s->size - s->pos) png_error(png, "image file is truncated");
    std::memcpy(out, s->data + s->pos, len);
    s->pos += len;
}

int decode_png(const unsigned char* data, size_t size, const Options* opt, Image* out, char* err) {
    PngSrc src;
    src.data = data; src.size = size; src.pos = 0; src.msg[0] = 0;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_fail, png_quiet);
    if (!png) { std::snprintf(err, kErrLen, "PNG: cannot create reader"); return FP_ERROR; }
    png_infop info = png_create_info_struct(png);
    unsigned char* volatile pixels = nullptr;
    png_bytep* volatile rows = nullptr;
    if (setjmp(png_jmpbuf(png))) {
        std::free(pixels);
        std::free(rows);
        png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
        std::snprintf(err, kErrLen, "PNG: %s", src.msg);
        return FP_ERROR;
    }
    if (!info) png_error(png, "cannot create info struct");
    // Our own pixel limit is the guard; libpng's default 1e6-per-side limit would refuse images PIL reads.
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_set_read_fn(png, &src, png_read_mem);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    unsigned long long npix = (unsigned long long)w * h;
    if (npix > opt->max_pixels) {
        std::snprintf(err, kErrLen, "image size %ux%u (%llu pixels) exceeds the limit of %llu pixels "
                      "(decompression bomb guard)", (unsigned)w, (unsigned)h, npix, opt->max_pixels);
        png_destroy_read_struct(&png, &info, nullptr);
        return FP_ERROR;
    }
    int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    // PIL opens 16-bit grey as "I;16" and converts it to 8 bits by clipping at 255; every other 16-bit layout
    // it reads as the high byte, which is what png_set_strip_16 keeps.
    const bool grey16 = color == PNG_COLOR_TYPE_GRAY && depth == 16;
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16 && !grey16) png_set_strip_16(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    const size_t rb = png_get_rowbytes(png, info);
    const int ch = png_get_channels(png, info);
    pixels = static_cast<unsigned char*>(std::malloc(rb * h));
    rows = static_cast<png_bytep*>(std::malloc(sizeof(png_bytep) * h));
    if (!pixels || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = pixels + (size_t)y * rb;
    png_read_image(png, rows);
    png_destroy_read_struct(&png, &info, nullptr);
    std::free(rows);

    // Alpha is dropped as PIL's convert('RGB') does; compaction runs forward in place (output never overtakes).
    const int c = ch <= 2 ? 1 : 3;
    unsigned char* dst = pixels;
    for (png_uint_32 y = 0; y < h; y++) {
        const unsigned char* p = pixels + (size_t)y * rb;
        if (grey16) {
            for (png_uint_32 x = 0; x < w; x++, p += 2) *dst++ = p[0] ? 255 : p[1];
        } else if (ch == c) {
            std::memmove(dst, p, (size_t)w * c);
            dst += (size_t)w * c;
        } else {
            for (png_uint_32 x = 0; x < w; x++, p += ch)
                for (int k = 0; k < c; k++) *dst++ = p[k];
        }
    }
    out->pixels = pixels;
    out->w = (int)w; out->h = (int)h; out->c = c;
    return FP_OK;
}

// ------------------------------------------------------------------------------------------------ dispatch

int decode_memory(const unsigned char* data, size_t size, const Options* opt, Image* out, char* err) {
    static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
        return decode_jpeg(data, size, opt, out, err);
    if (size >= 8 && std::memcmp(data, png_sig, 8) == 0) return decode_png(data, size, opt, out, err);
    std::snprintf(err, kErrLen, "unsupported image format");
    return FP_UNSUPPORTED;
}

int read_file(const char* path, unsigned char** data, size_t* size, char* err) {
    FILE* f = std::fopen(path, "rb");
    if (!f) { std::snprintf(err, kErrLen, "cannot open: %s", std::strerror(errno)); return FP_ERROR; }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        std::fclose(f);
        std::snprintf(err, kErrLen, "not a regular file");
        return FP_ERROR;
    }
    size_t n = (size_t)st.st_size;
    unsigned char* buf = static_cast<unsigned char*>(std::malloc(n ? n : 1));
    if (!buf) { std::fclose(f); std::snprintf(err, kErrLen, "out of memory"); return FP_ERROR; }
    size_t got = std::fread(buf, 1, n, f);
    std::fclose(f);
    if (got != n) { std::free(buf); std::snprintf(err, kErrLen, "read error"); return FP_ERROR; }
    *data = buf; *size = n;
    return FP_OK;
}

// ------------------------------------------------------------------------------------------------ resize
// PIL's Resample.c scheme: per output pixel a window of source pixels weighted by the cubic (a = -0.5) with its
// support widened by the downscale factor, weights normalised in double, then rounded to 22-bit fixed point;
// the horizontal pass runs first (on just the rows the vertical pass reads; but see resize_bicubic for when the
// vertical one does) and rounds to 8 bits in between.
// Both passes run one row kernel (the horizontal one on transposed pixels). Its AVX2 version (chosen at run time)
// does PIL's very integer arithmetic, 8 int32 lanes at a time, so it stays bit-identical to PIL; other CPUs run
// the scalar loop (auto-vectorised where the compiler can).

constexpr int kPrecision = 32 - 8 - 2;

double cubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

struct Coeffs {
    int ksize = 0;
    std::vector<int> bounds;  // per output: first source index, count
    std::vector<int32_t> k;   // per output: ksize fixed-point weights
};

Coeffs precompute(int in_size, int out_size) {
    Coeffs cf;
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    cf.ksize = (int)std::ceil(support) * 2 + 1;
    cf.bounds.resize(2 * (size_t)out_size);
    cf.k.assign((size_t)out_size * cf.ksize, 0);
    std::vector<double> w(cf.ksize);
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ss = 1.0 / filterscale, ww = 0.0;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            w[x] = cubic((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t* k = &cf.k[(size_t)xx * cf.ksize];
        for (int x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            k[x] = v < 0 ? (int)(-0.5 + v * (1 << kPrecision)) : (int)(0.5 + v * (1 << kPrecision));
        }
        cf.bounds[2 * xx] = xmin;
        cf.bounds[2 * xx + 1] = xmax;
    }
    return cf;
}

// The tables depend only on (in size, out size), and a data set resizes the same sizes over and over: each thread
// keeps the few it used last.
const Coeffs& coeffs_for(int in_size, int out_size) {
    struct Entry { int in, out; std::unique_ptr<Coeffs> cf; };
    thread_local std::vector<Entry> cache;
    for (auto& e : cache)
        if (e.in == in_size && e.out == out_size) return *e.cf;
    if (cache.size() >= 8) cache.erase(cache.begin());
    cache.push_back({in_size, out_size, std::make_unique<Coeffs>(precompute(in_size, out_size))});
    return *cache.back().cf;
}

inline unsigned char clip8(int v) {
    if (v >= (1 << kPrecision << 8)) return 255;
    if (v <= 0) return 0;
    return (unsigned char)(v >> kPrecision);
}

void vertical(const unsigned char* src, ptrdiff_t sstride, int row_len, const Coeffs& cf, int row_offset,
              int out_h, unsigned char* dst, ptrdiff_t dstride) {
    std::vector<int> acc(row_len);
    for (int yy = 0; yy < out_h; yy++) {
        const int ymin = cf.bounds[2 * yy] - row_offset, n = cf.bounds[2 * yy + 1];
        const int32_t* k = &cf.k[(size_t)yy * cf.ksize];
        std::fill(acc.begin(), acc.end(), 1 << (kPrecision - 1));
        for (int y = 0; y < n; y++) {
            const unsigned char* in = src + (ptrdiff_t)(ymin + y) * sstride;
            const int kv = k[y];
            for (int x = 0; x < row_len; x++) acc[x] += in[x] * kv;
        }
        unsigned char* o = dst + yy * dstride;
        for (int x = 0; x < row_len; x++) o[x] = clip8(acc[x]);
    }
}

std::atomic<bool> g_portable_resize{false};  // tests force the scalar kernels to check them on AVX2 machines too

#if defined(__x86_64__) || defined(__i386__)
bool has_avx2() {
    if (g_portable_resize.load(std::memory_order_relaxed)) return false;
    static const bool yes = __builtin_cpu_supports("avx2");
    return yes;
}

// 8 accumulators >> 22, saturated to 0..255 (what clip8 does per value) in the low 8 bytes.
__attribute__((target("avx2"))) inline __m128i clip8_avx2(__m256i acc) {
    const __m256i s = _mm256_srai_epi32(acc, kPrecision);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return _mm_packus_epi16(w, w);
}

__attribute__((target("avx2"))) void vertical_avx2(const unsigned char* src, ptrdiff_t sstride, int row_len,
                                                   const Coeffs& cf, int row_offset, int out_h, unsigned char* dst,
                                                   ptrdiff_t dstride) {
    const __m256i half = _mm256_set1_epi32(1 << (kPrecision - 1));
    for (int yy = 0; yy < out_h; yy++) {
        const int ymin = cf.bounds[2 * yy] - row_offset, n = cf.bounds[2 * yy + 1];
        const int32_t* k = &cf.k[(size_t)yy * cf.ksize];
        const unsigned char* in = src + (ptrdiff_t)ymin * sstride;
        unsigned char* o = dst + yy * dstride;
        int x0 = 0;
        for (; x0 + 32 <= row_len; x0 += 32) {  // 4 independent sums per weight broadcast
            __m256i acc[4] = {half, half, half, half};
            for (int y = 0; y < n; y++) {
                const __m256i kv = _mm256_set1_epi32(k[y]);
                const unsigned char* p = in + y * sstride + x0;
                for (int j = 0; j < 4; j++) {
                    const __m128i px = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * j));
                    acc[j] = _mm256_add_epi32(acc[j], _mm256_mullo_epi32(_mm256_cvtepu8_epi32(px), kv));
                }
            }
            for (int j = 0; j < 4; j++) _mm_storel_epi64(reinterpret_cast<__m128i*>(o + x0 + 8 * j), clip8_avx2(acc[j]));
        }
        // 8 values at a time; the last block overlaps the one before so that no byte past the row is touched.
        for (; x0 < row_len; x0 += 8) {
            const int x = x0 + 8 <= row_len ? x0 : row_len - 8;
            __m256i acc = half;
            for (int y = 0; y < n; y++) {
                const __m128i px = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(in + y * sstride + x));
                acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(px), _mm256_set1_epi32(k[y])));
            }
            _mm_storel_epi64(reinterpret_cast<__m128i*>(o + x), clip8_avx2(acc));
        }
    }
}
#endif

void vertical_pass(const unsigned char* src, ptrdiff_t sstride, int row_len, const Coeffs& cf, int row_offset,
                   int out_h, unsigned char* dst, ptrdiff_t dstride) {
#if defined(__x86_64__) || defined(__i386__)
    if (has_avx2() && row_len >= 8) return vertical_avx2(src, sstride, row_len, cf, row_offset, out_h, dst, dstride);
#endif
    vertical(src, sstride, row_len, cf, row_offset, out_h, dst, dstride);
}

// rows x cols pixels of C bytes (rows sstride bytes apart) to cols x rows pixels, rows dstride bytes apart; in
// 16 x 16 tiles so that both sides stay in cache.
template <int C>
void transpose_pixels(const unsigned char* src, ptrdiff_t sstride, int rows, int cols, unsigned char* dst,
                      ptrdiff_t dstride) {
    constexpr int kTile = 16;
    for (int y0 = 0; y0 < rows; y0 += kTile)
        for (int x0 = 0; x0 < cols; x0 += kTile) {
            const int y1 = std::min(rows, y0 + kTile), x1 = std::min(cols, x0 + kTile);
            for (int x = x0; x < x1; x++) {
                unsigned char* d = dst + x * dstride;
                const unsigned char* sp = src + (ptrdiff_t)x * C;
                int y = y0;
                if (C == 3) {
                    // 4-byte moves: the extra byte read is the next pixel's, the extra byte written is overwritten
                    // next (or by the next tile); only the last pixel of a destination row has no next one.
                    for (; y < std::min(y1, rows - 1); y++) {
                        uint32_t v;
                        std::memcpy(&v, sp + y * sstride, 4);
                        std::memcpy(d + (ptrdiff_t)y * C, &v, 4);
                    }
                }
                for (; y < y1; y++) std::memcpy(d + (ptrdiff_t)y * C, sp + y * sstride, C);
            }
        }
}

constexpr size_t kKeepScratch = 16 << 20;  // a thread keeps scratch buffers up to this size between calls

// The horizontal pass as a vertical one on the transposed rows: the row kernel then runs 8 lanes of one channel
// of one pixel each, with no per-pixel horizontal sums; the two transposes cost less than what that saves.
void horizontal_pass(const unsigned char* src, ptrdiff_t sstride, int rows, int w, int c, const Coeffs& cf,
                     int out_w, unsigned char* dst, ptrdiff_t dstride) {
    thread_local std::vector<unsigned char> cols, out_cols;  // reused: a batch resizes the same sizes
    const ptrdiff_t col_len = (ptrdiff_t)rows * c;
    cols.resize((size_t)w * col_len);
    out_cols.resize((size_t)out_w * col_len);
    if (c == 1) transpose_pixels<1>(src, sstride, rows, w, cols.data(), col_len);
    else transpose_pixels<3>(src, sstride, rows, w, cols.data(), col_len);
    vertical_pass(cols.data(), col_len, (int)col_len, cf, 0, out_w, out_cols.data(), col_len);
    if (c == 1) transpose_pixels<1>(out_cols.data(), col_len, out_w, rows, dst, dstride);
    else transpose_pixels<3>(out_cols.data(), col_len, out_w, rows, dst, dstride);
    if (cols.capacity() > kKeepScratch) std::vector<unsigned char>().swap(cols);
    if (out_cols.capacity() > kKeepScratch) std::vector<unsigned char>().swap(out_cols);
}



// src: h rows of w pixels of c channels, rows sstride bytes apart; dst: contiguous dh x dw x c.
void resize_bicubic(const unsigned char* src, int w, int h, ptrdiff_t sstride, int c, unsigned char* dst, int dw,
                    int dh) {
    const ptrdiff_t drow = (ptrdiff_t)dw * c;
    const bool need_h = dw != w, need_v = dh != h;
    if (!need_h && !need_v) {
        for (int y = 0; y < h; y++) std::memcpy(dst + y * drow, src + y * sstride, (size_t)drow);
        return;
    }
    const Coeffs& cv = coeffs_for(h, dh);
    if (!need_h) {
        vertical_pass(src, sstride, w * c, cv, 0, dh, dst, drow);
        return;
    }
    const Coeffs& ch = coeffs_for(w, dw);
    if (!need_v) {
        horizontal_pass(src, sstride, h, w, c, ch, dw, dst, drow);
        return;
    }
    if (h > dh && h - dh > 2 * (w - dw)) {
        // Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks, by more than
        // twice as many pixels as the width: the 8-bit rounding in between then differs, so we follow it.
        std::vector<unsigned char> tmp((size_t)dh * w * c);
        vertical_pass(src, sstride, w * c, cv, 0, dh, tmp.data(), (ptrdiff_t)w * c);
        horizontal_pass(tmp.data(), (ptrdiff_t)w * c, dh, w, c, ch, dw, dst, drow);
        return;
    }
    const int first = cv.bounds[0], last = cv.bounds[2 * dh - 2] + cv.bounds[2 * dh - 1];
    std::vector<unsigned char> tmp((size_t)(last - first) * drow);
    horizontal_pass(src + first * sstride, sstride, last - first, w, c, ch, dw, tmp.data(), drow);
    vertical_pass(tmp.data(), drow, dw * c, cv, first, dh, dst, drow);
}

// ------------------------------------------------------------------------------------------------ pairs

inline unsigned char luma(const unsigned char* p) {
    return (unsigned char)((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16);
}

// Columns [x0, x1) of img in `mc` channels, resized to dw x dh, into contiguous dst. Follows the reference
// chain's order: colour conversion (convert('RGB'), then Grayscale) before the resize.
void emit_region(const Image& img, int x0, int x1, int mc, int dw, int dh, unsigned char* dst) {
    const int w = x1 - x0, h = img.h;
    const ptrdiff_t stride = (ptrdiff_t)img.w * img.c;
    const unsigned char* src = img.pixels + (ptrdiff_t)x0 * img.c;
    if (img.c == mc) {
        resize_bicubic(src, w, h, stride, mc, dst, dw, dh);
    } else if (img.c == 1) {
        // Grey to RGB replicates the channel; resizing is per channel, so resize once and replicate after.
        resize_bicubic(src, w, h, stride, 1, dst, dw, dh);
        for (ptrdiff_t i = (ptrdiff_t)dw * dh - 1; i >= 0; i--) dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = dst[i];
    } else {
        std::vector<unsigned char> grey((size_t)w * h);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) grey[(size_t)y * w + x] = luma(src + y * stride + x * 3);
        resize_bicubic(grey.data(), w, h, w, 1, dst, dw, dh);
    }
}

struct DecodeErr : std::runtime_error { using std::runtime_error::runtime_error; };
struct UnsupportedErr : std::runtime_error { using std::runtime_error::runtime_error; };

struct OwnedImage {
    Image img{nullptr, 0, 0, 0};
    ~OwnedImage() { std::free(img.pixels); }
};

// Decodes a file (path) or an in-memory buffer; returns a status and fills msg on failure.
int decode_any(const std::string* path, const unsigned char* data, size_t size, const Options& opt, Image* out,
               std::string* msg) {
    char err[kErrLen] = {0};
    int st;
    if (path) {
        unsigned char* buf = nullptr;
        size_t n = 0;
        st = read_file(path->c_str(), &buf, &n, err);
        if (st == FP_OK) {
            st = decode_memory(buf, n, &opt, out, err);
            std::free(buf);
        }
    } else {
        st = decode_memory(data, size, &opt, out, err);
    }
    if (st != FP_OK) *msg = err;
    return st;
}

void throw_status(int st, const std::string& msg) {
    if (st == FP_UNSUPPORTED) throw UnsupportedErr(msg);
    throw DecodeErr(msg);
}

// Keeps either a path or a bytes-like buffer alive for the duration of a call.
struct Source {
    std::string path;
    bool is_path = false;
    py::buffer_info buf;
    explicit Source(const py::object& obj) {
        if (py::isinstance<py::str>(obj)) {
            path = obj.cast<std::string>();
            is_path = true;
        } else {
            buf = py::reinterpret_borrow<py::buffer>(obj).request();
        }
    }
    int decode(const Options& opt, Image* out, std::string* msg) const {
        return decode_any(is_path ? &path : nullptr, static_cast<const unsigned char*>(buf.ptr),
                          is_path ? 0 : (size_t)(buf.size * buf.itemsize), opt, out, msg);
    }
};

py::array_t<uint8_t> new_image(int h, int w, int c) { return py::array_t<uint8_t>({h, w, c}); }

py::array_t<uint8_t> py_decode(const py::object& src_obj, int channels, unsigned long long max_pixels) {
    Source src(src_obj);
    Options opt{max_pixels, 0, 0};
    OwnedImage im;
    std::string msg;
    int st;
    {
        py::gil_scoped_release nogil;
        st = src.decode(opt, &im.img, &msg);
    }
    if (st != FP_OK) throw_status(st, msg);
    auto arr = new_image(im.img.h, im.img.w, channels);
    unsigned char* dst = arr.mutable_data();
    {
        py::gil_scoped_release nogil;
        emit_region(im.img, 0, im.img.w, channels, im.img.w, im.img.h, dst);
    }
    return arr;
}

py::tuple py_decode_pair(const py::object& src_obj, int ca, int cb, int tw, int th, bool draft,
                         unsigned long long max_pixels) {
    Source src(src_obj);
    const bool resize = tw > 0 && th > 0;
    Options opt{max_pixels, draft && resize ? 2 * tw : 0, draft && resize ? th : 0};
    OwnedImage im;
    std::string msg;
    int st;
    {
        py::gil_scoped_release nogil;
        st = src.decode(opt, &im.img, &msg);
    }
    if (st != FP_OK) throw_status(st, msg);
    const int w2 = im.img.w / 2, h = im.img.h;
    if (w2 == 0) throw DecodeErr("image is too narrow to split into A|B (width " + std::to_string(im.img.w) + ")");
    auto a = resize ? new_image(th, tw, ca) : new_image(h, w2, ca);
    auto b = resize ? new_image(th, tw, cb) : new_image(h, im.img.w - w2, cb);
    unsigned char *pa = a.mutable_data(), *pb = b.mutable_data();
    {
        py::gil_scoped_release nogil;
        emit_region(im.img, 0, w2, ca, resize ? tw : w2, resize ? th : h, pa);
        emit_region(im.img, w2, im.img.w, cb, resize ? tw : im.img.w - w2, resize ? th : h, pb);
    }
    return py::make_tuple(a, b);
}

py::buffer_info batch_buffer(const py::buffer& b, const char* name, size_t n, int th, int tw, int c) {
    py::buffer_info info = b.request(true);
    if (info.itemsize != 1 || info.format != "B")
        throw std::invalid_argument(std::string(name) + ": expected a uint8 buffer, got format " + info.format);
    std::vector<py::ssize_t> want{(py::ssize_t)n, th, tw, c};
    if (info.shape != want)
        throw std::invalid_argument(std::string(name) + ": expected shape (" + std::to_string(n) + ", " +
                                    std::to_string(th) + ", " + std::to_string(tw) + ", " + std::to_string(c) + ")");
    std::vector<py::ssize_t> contiguous{(py::ssize_t)th * tw * c, (py::ssize_t)tw * c, c, 1};
    if (n > 0 && info.strides != contiguous) throw std::invalid_argument(std::string(name) + ": must be C-contiguous");
    return info;
}

// Decodes len(paths) A|B files on `threads` native threads (GIL released), each pair resized into its slot of
// out_a / out_b. Per item: None, or (kind, message) with kind "error" or "unsupported"; failed slots are zeroed.
py::list py_decode_pairs_into(const std::vector<std::string>& paths, const py::buffer& out_a, const py::buffer& out_b,
                              int tw, int th, int ca, int cb, bool draft, int threads,
                              unsigned long long max_pixels) {
    const size_t n = paths.size();
    py::buffer_info ia = batch_buffer(out_a, "out_a", n, th, tw, ca);
    py::buffer_info ib = batch_buffer(out_b, "out_b", n, th, tw, cb);
    unsigned char* base_a = static_cast<unsigned char*>(ia.ptr);
    unsigned char* base_b = static_cast<unsigned char*>(ib.ptr);
    const size_t slot_a = (size_t)th * tw * ca, slot_b = (size_t)th * tw * cb;
    Options opt{max_pixels, draft ? 2 * tw : 0, draft ? th : 0};
    std::vector<int> status(n, FP_OK);
    std::vector<std::string> messages(n);
    std::atomic<size_t> next{0};
    auto work = [&]() {
        for (size_t i; (i = next.fetch_add(1)) < n;) {
            unsigned char* pa = base_a + i * slot_a;
            unsigned char* pb = base_b + i * slot_b;
            try {
                OwnedImage im;
                int st = decode_any(&paths[i], nullptr, 0, opt, &im.img, &messages[i]);
                if (st == FP_OK && im.img.w < 2) {
                    st = FP_ERROR;
                    messages[i] = "image is too narrow to split into A|B";
                }
                if (st == FP_OK) {
                    const int w2 = im.img.w / 2;
                    emit_region(im.img, 0, w2, ca, tw, th, pa);
                    emit_region(im.img, w2, im.img.w, cb, tw, th, pb);
                }
                status[i] = st;
            } catch (const std::exception& e) {
                status[i] = FP_ERROR;
                messages[i] = e.what();
            }
            if (status[i] != FP_OK) {
                std::memset(pa, 0, slot_a);
                std::memset(pb, 0, slot_b);
            }
        }
    };
    {
        py::gil_scoped_release nogil;
        if (threads <= 0) threads = (int)std::max(1u, std::thread::hardware_concurrency());
        if ((size_t)threads > n) threads = (int)std::max<size_t>(n, 1);
        std::vector<std::thread> pool;
        for (int t = 1; t < threads; t++) pool.emplace_back(work);
        work();
        for (auto& t : pool) t.join();
    }
    py::list result;
    for (size_t i = 0; i < n; i++) {
        if (status[i] == FP_OK) result.append(py::none());
        else result.append(py::make_tuple(status[i] == FP_UNSUPPORTED ? "unsupported" : "error", messages[i]));
    }
    return result;
}

py::array_t<uint8_t> py_resize(const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>& src, int tw,
                               int th) {
    if (src.ndim() != 3 || (src.shape(2) != 1 && src.shape(2) != 3))
        throw std::invalid_argument("resize: expected an H x W x 1 or H x W x 3 uint8 array");
    const int h = (int)src.shape(0), w = (int)src.shape(1), c = (int)src.shape(2);
    if (w <= 0 || h <= 0 || tw <= 0 || th <= 0) throw std::invalid_argument("resize: empty size");
    auto out = new_image(th, tw, c);
    const unsigned char* s = src.data();
    unsigned char* d = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        resize_bicubic(s, w, h, (ptrdiff_t)w * c, c, d, tw, th);
    }
    return out;
}

// ------------------------------------------------------------------------------------------------ crops

inline uint64_t load64(const unsigned char* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }
inline uint32_t load32(const unsigned char* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline void store64(unsigned char* p, uint64_t v) { std::memcpy(p, &v, 8); }
inline void store32(unsigned char* p, uint32_t v) { std::memcpy(p, &v, 4); }

// Row mirroring, d[i] = s[n - 1 - i] for n pixels of c bytes. A byte-by-byte loop over 3-byte pixels runs ~3 cycles
// a pixel and does not vectorise. On x86-64 CPUs with SSSE3 (all since ~2008; chosen at run time, so the build needs
// no -march flag) 16 RGB pixels move per step through byte shuffles; elsewhere whole pixels move inside 64-bit words
// (4 RGB or 8 grey pixels a step) with plain shifts. The word layout assumes a little-endian machine.

std::atomic<bool> g_portable_only{false};  // tests force the portable kernel to check it on SIMD machines too

int mirror_words(const unsigned char* s, unsigned char* d, int n, int c) {
    int i = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (c == 3) {
        for (; i + 4 <= n; i += 4) {
            // Source pixels n-4-i .. n-1-i are bytes b0..b11 (P0 P1 P2 P3); they go out as P3 P2 P1 P0.
            const unsigned char* p = s + (ptrdiff_t)(n - 4 - i) * 3;
            const uint64_t x = load64(p);        // b0..b7
            const uint32_t y = load32(p + 8);    // b8..b11
            const uint64_t lo = (uint64_t)(y >> 8)                // b9 b10 b11
                                | ((x >> 48) << 24)                // b6 b7
                                | ((uint64_t)(y & 0xFF) << 40)     // b8
                                | (((x >> 24) & 0xFFFF) << 48);    // b3 b4
            const uint32_t hi = (uint32_t)((x >> 40) & 0xFF) | ((uint32_t)(x & 0xFFFFFF) << 8);  // b5 b0 b1 b2
            store64(d + (ptrdiff_t)i * 3, lo);
            store32(d + (ptrdiff_t)i * 3 + 8, hi);
        }
    } else if (c == 1) {
        for (; i + 8 <= n; i += 8) store64(d + i, __builtin_bswap64(load64(s + (n - 8 - i))));
    }
#endif
    return i;
}

#if defined(__x86_64__) || defined(__i386__)
// pshufb masks for 16 RGB pixels (48 bytes, 3 registers) reversed: output register r takes from input register q
// the bytes masks[r][q] names (0x80: none); ORing the three shuffles gives output register r.
struct RgbMirrorMasks {
    alignas(16) unsigned char m[3][3][16];
    RgbMirrorMasks() {
        for (int j = 0; j < 48; j++) {
            const int from = 3 * (15 - j / 3) + j % 3;
            for (int q = 0; q < 3; q++) m[j / 16][q][j % 16] = from / 16 == q ? (unsigned char)(from % 16) : 0x80;
        }
    }
};

__attribute__((target("ssse3"))) int mirror_rgb_ssse3(const unsigned char* s, unsigned char* d, int n) {
    static const RgbMirrorMasks masks;
    __m128i mask[3][3];
    for (int r = 0; r < 3; r++)
        for (int q = 0; q < 3; q++) mask[r][q] = _mm_load_si128(reinterpret_cast<const __m128i*>(masks.m[r][q]));
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const unsigned char* p = s + (ptrdiff_t)(n - 16 - i) * 3;
        __m128i in[3];
        for (int q = 0; q < 3; q++) in[q] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * q));
        for (int r = 0; r < 3; r++) {
            __m128i o = _mm_shuffle_epi8(in[0], mask[r][0]);
            o = _mm_or_si128(o, _mm_shuffle_epi8(in[1], mask[r][1]));
            o = _mm_or_si128(o, _mm_shuffle_epi8(in[2], mask[r][2]));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (ptrdiff_t)i * 3 + 16 * r), o);
        }
    }
    return i;
}

bool has_ssse3() {
    static const bool yes = __builtin_cpu_supports("ssse3");
    return yes;
}
#endif

void mirror_row(const unsigned char* s, unsigned char* d, int n, int c) {
    int i = 0;
#if defined(__x86_64__) || defined(__i386__)
    if (c == 3 && has_ssse3() && !g_portable_only.load(std::memory_order_relaxed)) i = mirror_rgb_ssse3(s, d, n);
#endif
    // The rest (or all): the word kernel on what remains, which is pixels 0 .. n-1-i of the source.
    i += mirror_words(s, d + (ptrdiff_t)i * c, n - i, c);
    for (; i < n; i++) std::memcpy(d + (ptrdiff_t)i * c, s + (ptrdiff_t)(n - 1 - i) * c, (size_t)c);
}

// The crops of a C-contiguous uint8 (N, H, W, C) source: sample k is src[rows[k], ys[k]:ys[k]+crop,
// xs[k]:xs[k]+crop], mirrored left-right where flips[k]. Checked once, shared by the uint8 and float outputs.
struct CropPlan {
    const unsigned char* base;
    int64_t h, w, c, crop;
    const std::vector<int64_t>& rows;
    const std::vector<int64_t>& xs;
    const std::vector<int64_t>& ys;
    const std::vector<bool>& flips;

    const unsigned char* start(size_t k) const { return base + ((rows[k] * h + ys[k]) * w + xs[k]) * c; }
};

CropPlan plan_crops(const char* fn, const py::buffer_info& is, int64_t crop, const std::vector<int64_t>& rows,
                    const std::vector<int64_t>& xs, const std::vector<int64_t>& ys, const std::vector<bool>& flips) {
    const std::string name(fn);
    if (is.itemsize != 1 || is.format != "B" || is.ndim != 4)
        throw std::invalid_argument(name + ": src must be a uint8 array of 4 dimensions (N, H, W, C)");
    const int64_t n = is.shape[0], h = is.shape[1], w = is.shape[2], c = is.shape[3];
    if (is.strides != std::vector<py::ssize_t>{h * w * c, w * c, c, 1})
        throw std::invalid_argument(name + ": src and out must be C-contiguous");
    if (xs.size() != rows.size() || ys.size() != rows.size() || flips.size() != rows.size())
        throw std::invalid_argument(name + ": rows, xs, ys and flips must be of one length");
    for (size_t k = 0; k < rows.size(); k++)
        if (rows[k] < 0 || rows[k] >= n || xs[k] < 0 || ys[k] < 0 || xs[k] + crop > w || ys[k] + crop > h)
            throw std::invalid_argument(name + ": crop " + std::to_string(k) + " lies outside the source");
    return CropPlan{static_cast<const unsigned char*>(is.ptr), h, w, c, crop, rows, xs, ys, flips};
}

// Mirrored rows are read from their end backwards, which hardware prefetchers follow poorly: a flipped crop from a
// cache beyond L2 ran ~4x slower than a plain one. Asking for the row two ahead while this one is copied fixes that.
constexpr int64_t kPrefetchRows = 2;

inline void prefetch_bytes(const unsigned char* p, size_t n) {
    for (size_t o = 0; o < n; o += 64) __builtin_prefetch(p + o);
    __builtin_prefetch(p + n - 1);
}

// Runs one(k) for k < count on `threads` threads (the caller's among them), the GIL released.
template <class Fn>
void parallel_samples(size_t count, int threads, Fn one) {
    std::atomic<size_t> next{0};
    auto work = [&]() {
        for (size_t k; (k = next.fetch_add(1)) < count;) one(k);
    };
    py::gil_scoped_release nogil;
    threads = (int)std::max<size_t>(1, std::min<size_t>(count, (size_t)std::max(threads, 1)));
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; t++) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
}

// out (len(rows), crop, crop, C) uint8 = the crops, one pass: memcpy for plain rows, mirror_row for flipped ones.
void py_crop_flip_into(const py::buffer& src, const std::vector<int64_t>& rows, const std::vector<int64_t>& xs,
                       const std::vector<int64_t>& ys, const std::vector<bool>& flips, const py::buffer& out,
                       int threads) {
    py::buffer_info is = src.request(), io = out.request(true);
    if (io.itemsize != 1 || io.format != "B" || io.ndim != 4)
        throw std::invalid_argument("crop_flip_into: out must be a uint8 array of 4 dimensions (B, crop, crop, C)");
    const int64_t crop = io.shape[1];
    const CropPlan plan = plan_crops("crop_flip_into", is, crop, rows, xs, ys, flips);
    const int64_t c = plan.c;
    if (io.shape[0] != (int64_t)rows.size() || io.shape[2] != crop || io.shape[3] != c)
        throw std::invalid_argument("crop_flip_into: out must be (len(rows), crop, crop, C)");
    if (io.strides != std::vector<py::ssize_t>{crop * crop * c, crop * c, c, 1})
        throw std::invalid_argument("crop_flip_into: src and out must be C-contiguous");
    unsigned char* dst = static_cast<unsigned char*>(io.ptr);
    const size_t row_bytes = (size_t)(crop * c);
    parallel_samples(rows.size(), threads, [&](size_t k) {
        const unsigned char* s = plan.start(k);
        unsigned char* d = dst + k * (size_t)crop * row_bytes;
        for (int64_t y = 0; y < crop; y++, s += plan.w * c, d += row_bytes) {
            if (y + kPrefetchRows < crop) prefetch_bytes(s + kPrefetchRows * plan.w * c, row_bytes);
            if (plan.flips[k]) mirror_row(s, d, (int)crop, (int)c);
            else std::memcpy(d, s, row_bytes);
        }
    });
}

// out (len(rows), C, crop, crop) float32 = table[crops], channels split into planes: crop, flip, NHWC -> NCHW and
// normalisation in one pass. table is 256 float32 values computed by the caller with to_tensor's own operations,
// so the result is theirs bit for bit however they round.
void py_crop_flip_normalize_into(const py::buffer& src, const std::vector<int64_t>& rows,
                                 const std::vector<int64_t>& xs, const std::vector<int64_t>& ys,
                                 const std::vector<bool>& flips, const py::buffer& table, const py::buffer& out,
                                 int threads) {
    py::buffer_info is = src.request(), it = table.request(), io = out.request(true);
    if (it.itemsize != 4 || it.format != "f" || it.ndim != 1 || it.shape[0] != 256 || it.strides[0] != 4)
        throw std::invalid_argument("crop_flip_normalize_into: table must be 256 contiguous float32 values");
    if (io.itemsize != 4 || io.format != "f" || io.ndim != 4)
        throw std::invalid_argument("crop_flip_normalize_into: out must be a float32 array (B, C, crop, crop)");
    const int64_t crop = io.shape[2];
    const CropPlan plan = plan_crops("crop_flip_normalize_into", is, crop, rows, xs, ys, flips);
    const int64_t c = plan.c;
    if (io.shape[0] != (int64_t)rows.size() || io.shape[1] != c || io.shape[3] != crop)
        throw std::invalid_argument("crop_flip_normalize_into: out must be (len(rows), C, crop, crop)");
    if (io.strides != std::vector<py::ssize_t>{c * crop * crop * 4, crop * crop * 4, crop * 4, 4})
        throw std::invalid_argument("crop_flip_normalize_into: src and out must be C-contiguous");
    const float* lut = static_cast<const float*>(it.ptr);
    float* dst = static_cast<float*>(io.ptr);
    parallel_samples(rows.size(), threads, [&](size_t k) {
        std::vector<unsigned char> line(plan.flips[k] ? (size_t)(crop * c) : 0);
        const unsigned char* s = plan.start(k);
        for (int64_t y = 0; y < crop; y++, s += plan.w * c) {
            if (y + kPrefetchRows < crop) prefetch_bytes(s + kPrefetchRows * plan.w * c, (size_t)(crop * c));
            const unsigned char* px = s;
            if (plan.flips[k]) {
                mirror_row(s, line.data(), (int)crop, (int)c);
                px = line.data();
            }
            float* o = dst + ((int64_t)k * c * crop + y) * crop;
            if (c == 3) {
                float* o1 = o + crop * crop;
                float* o2 = o1 + crop * crop;
                for (int64_t x = 0; x < crop; x++) {
                    o[x] = lut[px[3 * x]];
                    o1[x] = lut[px[3 * x + 1]];
                    o2[x] = lut[px[3 * x + 2]];
                }
            } else {
                for (int64_t ch = 0; ch < c; ch++, o += crop * crop)
                    for (int64_t x = 0; x < crop; x++) o[x] = lut[px[x * c + ch]];
            }
        }
    });
}

}  // namespace

PYBIND11_MODULE(_decode, m) {
    m.doc() = "fastpix native image decoding (libjpeg-turbo, libpng) and PIL-exact bicubic resizing";
    auto& decode_error = py::register_exception<DecodeErr>(m, "DecodeError", PyExc_ValueError);
    py::register_exception<UnsupportedErr>(m, "UnsupportedFormat", decode_error.ptr());
    m.def("decode", &py_decode, py::arg("src"), py::arg("channels"), py::arg("max_pixels"));
    m.def("decode_pair", &py_decode_pair, py::arg("src"), py::arg("channels_a"), py::arg("channels_b"),
          py::arg("width"), py::arg("height"), py::arg("draft"), py::arg("max_pixels"));
    m.def("decode_pairs_into", &py_decode_pairs_into, py::arg("paths"), py::arg("out_a"), py::arg("out_b"),
          py::arg("width"), py::arg("height"), py::arg("channels_a"), py::arg("channels_b"), py::arg("draft"),
          py::arg("threads"), py::arg("max_pixels"));
    m.def("resize", &py_resize, py::arg("src"), py::arg("width"), py::arg("height"));
    m.def("crop_flip_into", &py_crop_flip_into, py::arg("src"), py::arg("rows"), py::arg("xs"), py::arg("ys"),
          py::arg("flips"), py::arg("out"), py::arg("threads"));
    m.def("_portable_resize_only", [](bool on) { g_portable_resize.store(on); },
          "tests: resize with the scalar kernels even where AVX2 ones are available");
    m.def("_portable_mirror_only", [](bool on) { g_portable_only.store(on); },
          "tests: mirror rows with the portable kernel even where a SIMD one is available");
    m.def("crop_flip_normalize_into", &py_crop_flip_normalize_into, py::arg("src"), py::arg("rows"), py::arg("xs"),
          py::arg("ys"), py::arg("flips"), py::arg("table"), py::arg("out"), py::arg("threads"));
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
    m.attr("libjpeg_turbo_version") = LIBJPEG_TURBO_VERSION_NUMBER;
#endif
    m.attr("libpng_version") = PNG_LIBPNG_VER_STRING;
}
