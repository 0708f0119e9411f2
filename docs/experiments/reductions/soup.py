# Diagnostic (reductions.md, "Every size at every step, larger batches, a hybrid teacher's headroom, and the defaults"): the average of several trained reductions'
# bases and means, the basis projected back to the nearest orthogonal matrix (Newton–Schulz
# polar iteration), written as a reduction folder tessera loads. Pure Python, no dependencies.
#
#   python3 soup.py OUT_DIR RED_DIR RED_DIR [RED_DIR ...]
import json, struct, sys, array, os
def read(p):
    b=open(p,'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n]); data=b[8+n:]
    out={}
    for k,v in h.items():
        if k=='__metadata__': continue
        s,e=v['data_offsets']; a=array.array('f'); a.frombytes(data[s:e]); out[k]=(v,list(a))
    return h,out
def write(p,h,tensors):
    off=0; hdr={}; blobs=[]
    if '__metadata__' in h: hdr['__metadata__']=h['__metadata__']
    for k,(v,vals) in tensors.items():
        a=array.array('f',vals).tobytes(); hdr[k]=dict(v, data_offsets=[off,off+len(a)]); off+=len(a); blobs.append(a)
    j=json.dumps(hdr).encode(); j+=b' '*((8-len(j)%8)%8)
    open(p,'wb').write(struct.pack('<Q',len(j))+j+b''.join(blobs))
srcs=sys.argv[2:]; out=sys.argv[1]
hs=[read(os.path.join(s,'reduction.safetensors')) for s in srcs]
h0,t0=hs[0]
print({k:(v['shape'],v['dtype']) for k,(v,_) in t0.items()})
avg={k:(v,[sum(t[k][1][i] for _,t in hs)/len(hs) for i in range(len(vals))]) for k,(v,vals) in t0.items()}
k=int(len(avg['basis'][1])**0.5)
U=[avg['basis'][1][i*k:(i+1)*k] for i in range(k)]
def mm(A,B):
    Bt=list(zip(*B)); return [[sum(a*b for a,b in zip(r,c)) for c in Bt] for r in A]
def T(A): return [list(r) for r in zip(*A)]
for it in range(12):
    UtU=mm(T(U),U); UUtU=mm(U,UtU)
    U=[[1.5*U[i][j]-0.5*UUtU[i][j] for j in range(k)] for i in range(k)]
    err=max(abs(UtU[i][j]-(1.0 if i==j else 0.0)) for i in range(k) for j in range(k))
    print(it, err, flush=True)
    if err<1e-7: break
avg['basis']=(avg['basis'][0],[x for r in U for x in r])
os.makedirs(out,exist_ok=True)
write(os.path.join(out,'reduction.safetensors'),h0,avg)
meta=json.load(open(os.path.join(srcs[0],'reduction.json')))
meta['training']={'note':'diagnostic: polar projection of the mean of '+', '.join(srcs)}
json.dump(meta,open(os.path.join(out,'reduction.json'),'w'),indent=1)
