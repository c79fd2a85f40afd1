/* One-thread GB/s of the integer matvec kernels on repacked weights (shaders/cpu/q8.h, repack.c):
 * the measurement behind docs/benchmarks/cpu-native.md's kernel figures.
 *   cd shaders/cpu && gcc -O3 -std=c11 -D_POSIX_C_SOURCE=200809L -fno-math-errno <the build's -m flags,
 *      e.g. -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c -mbmi2 -mavx512vnni> -I. \
 *      quant.c f16_table.c repack.c arch/avx512/matvec.c ../../scripts/q8_matvec_bench.c -o /tmp/q8mb -lm -pthread
 *   NIT=40 /tmp/q8mb QTYPE ACT [ROWS K R NMAT]
 * QTYPE 2 (Q4_0), 12 (Q4_K), 14 (Q6_K); ACT 1 (q8) or 2 (i16); NMAT matrices are rotated (8 x 4096^2
 * is far past the L3: a streaming figure; NMAT 1 with 1024^2 stays in L2: the kernel's own speed).
 * The best of NIT passes; DUMP=FILE writes y (to compare two builds bit for bit). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "g4cpu.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
int main(int argc,char**argv){
  int qtype=atoi(argv[1]), act=atoi(argv[2]); int rows=argc>3?atoi(argv[3]):4096, K=argc>4?atoi(argv[4]):4096;
  int R = argc>5?atoi(argv[5]):1;
  int64_t rb = qtype==2? K/32*18 : qtype==12? K/256*144 : K/256*210;
  int NM = argc>6?atoi(argv[6]):8; /* 8 matrices rotated: > L3 */
  size_t rp = g4_repack8_bytes(qtype, rows, rb);
  uint8_t *src = malloc((size_t)rows*rb);
  srand(1);
  for (size_t i=0;i<(size_t)rows*rb;i++) src[i]=rand();
  /* sane f16 scales: set every block's d to small values */
  int bs = qtype==2?18:qtype==12?144:210;
  for (int64_t o=0;o<rows;o++) for (int64_t b=0;b<rb/bs;b++){ uint8_t*p=src+o*rb+b*bs; if(qtype==14){p[208]=0x00;p[209]=0x1c;} else {p[0]=0;p[1]=0x1c; if(qtype==12){p[2]=0;p[3]=0x1c;}} }
  uint8_t *w[8]; for(int m=0;m<NM;m++){ w[m]=aligned_alloc(64,(rp+63)&~63ul); g4_repack8(qtype,src,rows,rb,w[m]); }
  float *x=malloc(sizeof(float)*K*R), *y=malloc(sizeof(float)*rows*R);
  for(int i=0;i<K*R;i++) x[i]=(rand()/(float)RAND_MAX)-0.5f;
  g4_cmd c; memset(&c,0,sizeof c); c.op=G4_OP_MATMUL; c.qtype=qtype; c.act=act|G4_ACT_REPACKED; c.rows=R; c.cols=rows; c.in_cols=K; c.w_rows=rows; c.w_row_bytes=rb;
  size_t n=g4_matvec_scratch(&c); void*ws[16]; for(int r=0;r<R;r++){ws[r]=aligned_alloc(64,(n+63)&~63ul); g4_matvec_prepare(&c,x+r*K,ws[r]);}
  const float* xs[16]; float* ys[16]; for(int r=0;r<R;r++){xs[r]=x+r*K; ys[r]=y+r*rows;}
  double best=1e9;
  int NIT=getenv("NIT")?atoi(getenv("NIT")):5; for(int it=0;it<NIT;it++){ double t0=now(); for(int m=0;m<NM;m++){ c.w=w[m]; if(R==1) g4_matvec(&c,x,ws[0],y,0,rows); else g4_matvec_rows(&c,R,xs,(void*const*)ws,ys,0,rows);} double t=(now()-t0)/NM; if(t<best)best=t; }
  if(getenv("DUMP")){FILE*f=fopen(getenv("DUMP"),"wb");fwrite(y,sizeof(float),(size_t)rows*R,f);fclose(f);}
  printf("qtype %d act %d R %d: %.4f ms per %dx%d, %.2f GB/s (gguf bytes)\n",qtype,act,R,best*1e3,rows,K,(double)rows*rb/best/1e9);
  return 0;
}
