import http.client, time, sys
n=int(sys.argv[1]); base=int(sys.argv[2])
c=http.client.HTTPConnection("127.0.0.1", int(sys.argv[3]))
ts=[]
for i in range(n):
    body=f'intent_id="t{base+i}"\nactor="bench"\ntarget_scope="ghost:g-0"\nobjective="trace"\n[[step]]\nseed="seed.flow"\noperation="echo"\nargs={{msg="hi"}}\n'
    t=time.perf_counter()
    c.request("POST","/v1/intents?wait=10",body)
    r=c.getresponse(); d=r.read()
    ts.append((time.perf_counter()-t)*1e6)
    assert r.status==201 and b'satisfied' in d, d
    time.sleep(0.03)
ts.sort(); print("client p50 us", ts[len(ts)//2], "min", ts[0], "max", ts[-1])
