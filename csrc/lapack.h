// The few BLAS/LAPACK routines the CPU core calls, declared here rather than through a vendor header so the core
// builds against any LP64 LAPACK. The default provider is scipy-openblas32 (the OpenBLAS build numpy and scipy
// use, shipped as a PyPI wheel), whose symbols carry the prefix `scipy_`; TB_LAPACK_PREFIX switches it.
#pragma once

#include <complex>
#include <cstddef>

#ifndef TB_LAPACK_PREFIX
#define TB_LAPACK_PREFIX scipy_
#endif
#define TB_CAT2(a, b) a##b
#define TB_CAT(a, b) TB_CAT2(a, b)
#define TB_SYM(name) TB_CAT(TB_LAPACK_PREFIX, name)

extern "C" {
using tb_len = std::size_t;  // hidden Fortran string lengths (gfortran ABI)
using tb_c64 = std::complex<float>;
using tb_c128 = std::complex<double>;

void TB_SYM(ssyrk_)(const char* uplo, const char* trans, const int* n, const int* k, const float* alpha,
                    const float* a, const int* lda, const float* beta, float* c, const int* ldc, tb_len, tb_len);
void TB_SYM(dsyrk_)(const char* uplo, const char* trans, const int* n, const int* k, const double* alpha,
                    const double* a, const int* lda, const double* beta, double* c, const int* ldc, tb_len, tb_len);
void TB_SYM(cherk_)(const char* uplo, const char* trans, const int* n, const int* k, const float* alpha,
                    const tb_c64* a, const int* lda, const float* beta, tb_c64* c, const int* ldc, tb_len, tb_len);
void TB_SYM(zherk_)(const char* uplo, const char* trans, const int* n, const int* k, const double* alpha,
                    const tb_c128* a, const int* lda, const double* beta, tb_c128* c, const int* ldc, tb_len,
                    tb_len);

// Eigenvalues only (jobz = 'N'), divide and conquer driver and its two-stage variant.
void TB_SYM(ssyevd_)(const char* jobz, const char* uplo, const int* n, float* a, const int* lda, float* w,
                     float* work, const int* lwork, int* iwork, const int* liwork, int* info, tb_len, tb_len);
void TB_SYM(dsyevd_)(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
                     double* work, const int* lwork, int* iwork, const int* liwork, int* info, tb_len, tb_len);
void TB_SYM(cheevd_)(const char* jobz, const char* uplo, const int* n, tb_c64* a, const int* lda, float* w,
                     tb_c64* work, const int* lwork, float* rwork, const int* lrwork, int* iwork,
                     const int* liwork, int* info, tb_len, tb_len);
void TB_SYM(zheevd_)(const char* jobz, const char* uplo, const int* n, tb_c128* a, const int* lda, double* w,
                     tb_c128* work, const int* lwork, double* rwork, const int* lrwork, int* iwork,
                     const int* liwork, int* info, tb_len, tb_len);
void TB_SYM(ssyevd_2stage_)(const char* jobz, const char* uplo, const int* n, float* a, const int* lda, float* w,
                            float* work, const int* lwork, int* iwork, const int* liwork, int* info, tb_len,
                            tb_len);
void TB_SYM(dsyevd_2stage_)(const char* jobz, const char* uplo, const int* n, double* a, const int* lda,
                            double* w, double* work, const int* lwork, int* iwork, const int* liwork, int* info,
                            tb_len, tb_len);
void TB_SYM(cheevd_2stage_)(const char* jobz, const char* uplo, const int* n, tb_c64* a, const int* lda, float* w,
                            tb_c64* work, const int* lwork, float* rwork, const int* lrwork, int* iwork,
                            const int* liwork, int* info, tb_len, tb_len);
void TB_SYM(zheevd_2stage_)(const char* jobz, const char* uplo, const int* n, tb_c128* a, const int* lda,
                            double* w, tb_c128* work, const int* lwork, double* rwork, const int* lrwork,
                            int* iwork, const int* liwork, int* info, tb_len, tb_len);

// Index-range eigenvalues (only the top k), MRRR.
void TB_SYM(ssyevr_)(const char* jobz, const char* range, const char* uplo, const int* n, float* a, const int* lda,
                     const float* vl, const float* vu, const int* il, const int* iu, const float* abstol, int* m,
                     float* w, float* z, const int* ldz, int* isuppz, float* work, const int* lwork, int* iwork,
                     const int* liwork, int* info, tb_len, tb_len, tb_len);
void TB_SYM(dsyevr_)(const char* jobz, const char* range, const char* uplo, const int* n, double* a,
                     const int* lda, const double* vl, const double* vu, const int* il, const int* iu,
                     const double* abstol, int* m, double* w, double* z, const int* ldz, int* isuppz,
                     double* work, const int* lwork, int* iwork, const int* liwork, int* info, tb_len, tb_len,
                     tb_len);
void TB_SYM(cheevr_)(const char* jobz, const char* range, const char* uplo, const int* n, tb_c64* a,
                     const int* lda, const float* vl, const float* vu, const int* il, const int* iu,
                     const float* abstol, int* m, float* w, tb_c64* z, const int* ldz, int* isuppz, tb_c64* work,
                     const int* lwork, float* rwork, const int* lrwork, int* iwork, const int* liwork, int* info,
                     tb_len, tb_len, tb_len);
void TB_SYM(zheevr_)(const char* jobz, const char* range, const char* uplo, const int* n, tb_c128* a,
                     const int* lda, const double* vl, const double* vu, const int* il, const int* iu,
                     const double* abstol, int* m, double* w, tb_c128* z, const int* ldz, int* isuppz,
                     tb_c128* work, const int* lwork, double* rwork, const int* lrwork, int* iwork,
                     const int* liwork, int* info, tb_len, tb_len, tb_len);

// BLAS thread count of this OpenBLAS copy (process-wide; the per-thread variant is not exported by every build).
void TB_SYM(openblas_set_num_threads)(int num_threads);
int TB_SYM(openblas_get_num_threads)(void);
}
